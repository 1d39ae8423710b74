"""The scaling stage: a strong- and weak-scaling sweep of the training app on one model, before its long training.

Which model (``stages.scaling.model``): ``best`` — the promoted model with the best objective (of this campaign,
or of ``from_campaign``) — or a ``models.id``. Its trial's ``models.train`` config gives the data and the
architecture, so the study times exactly what the train stage would run.

One task per (mode, precision, ranks) point, key ``scaling/<mode>/<precision>/ranks-<n>``, app ``models.train``
from scratch for ``steps`` optimizer steps (``max_steps``; no early stopping), on ``ceil(n / ranks_per_node)``
nodes x ``min(n, ranks_per_node)`` ranks:

* ``strong``: the global batch ``batch_size`` is split over the ranks (``batch_size / n`` graphs per rank);
* ``weak``: every rank takes ``batch_size`` graphs per step (the global batch grows with ``n``).

The figure of a point is the app's ``train_graphs_per_s`` (graphs per second over all ranks, training steps only:
start-up and validation excluded). Its efficiency against the sweep's smallest point ``n0`` of the same mode and
precision is ``throughput(n) / ((n / n0) * throughput(n0))``: for strong scaling that is ``T(n0) n0 / (T(n) n)``
with ``T`` the time of one step, for weak scaling ``T(n0) / T(n)``. 1 is perfect scaling.

Recorded per point (idempotent, also on re-entry), as rows of the ``metrics`` table (task = the point's task,
split ``train``, head ``None``, epoch 0): ``graphs_per_s``, ``graphs_per_s_per_rank``, ``efficiency``,
``step_time_s``, ``peak_memory_bytes`` and, where the hardware exposes it (NVML, amdsmi, RAPL: :mod:`models.energy`),
``energy_j_per_step``. ``ctx.shared["scaling"]`` = the points as dicts.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from campaign.errors import CampaignInputError
from campaign.stages.base import PlannedTask, StageContext, app_config, app_task_config
from campaign.stages.screen import is_selected, model_objective, training_config
from campaign.tasks import ResourceRequest, TaskResult, TaskSpec, TaskState
from models.appio import BadInput
from models.contracts.train import TrainConfig, TrainResult, read_result

#: Train-config keys of the trial that a timing run must not inherit.
_DROPPED_KEYS = ("resume_from", "init_from", "stop_file", "chunk_epochs", "max_steps", "time_limit_s",
                 "auto_resume", "head_groups", "patience", "epochs", "batch_size", "precision", "output_dir")

_KEY = re.compile(r"^scaling/(strong|weak)/([a-z0-9]+)/ranks-(\d+)$")

#: Epochs a timing run may take at most: enough for ``steps`` steps on any split (``max_steps`` ends it first).
_EPOCHS = 1_000_000


def point_key(mode: str, precision: str, ranks: int) -> str:
    """The task key of one point of the sweep."""
    return f"scaling/{mode}/{precision}/ranks-{ranks}"


def parse_point_key(key: str) -> tuple[str, str, int] | None:
    """``(mode, precision, ranks)`` of a scaling task key, None for another key."""
    match = _KEY.match(key)
    return (match.group(1), match.group(2), int(match.group(3))) if match else None


@dataclass(frozen=True)
class ScalingPoint:
    """One measured point of a scaling sweep.

    Attributes:
        mode: ``strong`` or ``weak``.
        precision: ``fp64``, ``fp32`` or ``bf16``.
        ranks: Total ranks.
        nodes: Nodes the point held.
        batch_per_rank: Graphs per rank per step.
        graphs_per_s: Training throughput over all ranks, graphs/s.
        step_time_s: Seconds per optimizer step (global batch / throughput).
        efficiency: Throughput against the sweep's smallest point of the same mode and precision (1 = perfect).
        peak_memory_bytes: The largest peak memory of a rank, bytes.
        energy_j_per_step: GPU + CPU package + DRAM energy per optimizer step, J (validation included), where the
            hardware exposes it (:mod:`models.energy`); ``None`` elsewhere.
    """

    mode: str
    precision: str
    ranks: int
    nodes: int
    batch_per_rank: int
    graphs_per_s: float
    step_time_s: float
    efficiency: float
    peak_memory_bytes: int
    energy_j_per_step: float | None = None

    @property
    def graphs_per_s_per_rank(self) -> float:
        """Throughput per rank, graphs/s."""
        return self.graphs_per_s / self.ranks


def efficiencies(points: dict[tuple[str, str, int], float]) -> dict[tuple[str, str, int], float]:
    """Scaling efficiency of each ``(mode, precision, ranks) -> graphs/s`` point against the smallest rank count
    measured for its mode and precision: ``throughput(n) / ((n / n0) * throughput(n0))``."""
    out: dict[tuple[str, str, int], float] = {}
    for (mode, prec, n), thr in points.items():
        n0 = min(r for (m, p, r) in points if (m, p) == (mode, prec))
        base = points[(mode, prec, n0)]
        out[(mode, prec, n)] = thr / ((n / n0) * base) if base > 0 else math.nan
    return out


class ScalingStage:
    """Plans one timing run of the training app per point of the sweep and records throughput and efficiency."""

    name = "scaling"
    kind = "scaling"

    def __init__(self, recipe: Any) -> None:
        self.recipe = recipe
        self.spec = recipe.stages.scaling
        self.note = ""  # why the stage failed, when it did

    # ------------------------------------------------------------------------------------- model
    def _model(self, ctx: StageContext) -> Any:
        led, spec = ctx.ledger, self.spec
        if isinstance(spec.model, int):
            rows = led.models(ids=[spec.model])
            if not rows:
                raise CampaignInputError(f"stages.scaling.model: no model with id {spec.model} in the database")
            return rows[0]
        campaign_id = ctx.campaign_id
        if spec.from_campaign is not None:
            cid = led.campaign_id(spec.from_campaign)
            if cid is None:
                raise CampaignInputError(f"stages.scaling.from_campaign: no campaign named {spec.from_campaign!r} "
                                         "in the database")
            campaign_id = int(cid)
        found = [r for r in led.models(campaign_id=campaign_id, role="promoted") if is_selected(r)]
        if not found:
            where = spec.from_campaign or self.recipe.campaign
            raise CampaignInputError(f"stages.scaling: campaign {where!r} has no promoted model to time (run a "
                                     "promote stage first, or give stages.scaling.model an id)")
        return min(found, key=lambda r: (model_objective(r), r.id))

    def _task(self, ctx: StageContext, row: Any, base: TrainConfig, mode: str, precision: str,
              ranks: int) -> PlannedTask:
        spec = self.spec
        per_rank = spec.batch_size // ranks if mode == "strong" else spec.batch_size
        workdir = ctx.task_dir("scaling", mode, precision, f"ranks-{ranks}")
        cpu = spec.gpus_per_rank == 0
        cfg = base.model_dump(mode="json", exclude=set(_DROPPED_KEYS), exclude_none=True)
        cfg.update(epochs=_EPOCHS, max_steps=spec.steps, patience=0, batch_size=per_rank, precision=precision,
                   output_dir=str(workdir), device="cpu" if cpu else "auto",
                   gpus_per_rank=max(1, spec.gpus_per_rank))
        if cpu and not cfg.get("threads"):
            cfg["threads"] = 1  # one core per rank (ResourceRequest.cpus_per_rank)
        key = point_key(mode, precision, ranks)
        config = app_config(TrainConfig, cfg, f"stages.scaling: point {key}")
        res = ResourceRequest(nodes=math.ceil(ranks / spec.ranks_per_node),
                              ranks_per_node=min(ranks, spec.ranks_per_node), gpus_per_rank=spec.gpus_per_rank)
        return PlannedTask(key, TaskSpec(kind="train", app="models.train", config=app_task_config(config),
                                         workdir=str(workdir), resources=res),
                           inputs=(("model", row.id),))

    def start(self, ctx: StageContext) -> list[PlannedTask]:
        """One timing task per (mode, precision, ranks) point, smallest rank counts first."""
        row = self._model(ctx)
        try:
            base = training_config(ctx.ledger, row)
        except BadInput as exc:
            raise CampaignInputError(f"stages.scaling: model {row.id} ({row.name}): no config to train from: "
                                     f"{exc}") from None
        spec = self.spec
        return [self._task(ctx, row, base, mode, prec, n) for n in spec.ranks for prec in spec.precision
                for mode in spec.modes]

    # ------------------------------------------------------------------------------------- results
    def on_done(self, ctx: StageContext, task: Any, result: TaskResult) -> list[PlannedTask]:
        """Nothing to plan: a point's efficiency needs the sweep's smallest point (recorded in ``finish``)."""
        return []

    def on_failed(self, ctx: StageContext, task: Any, result: TaskResult | None) -> list[PlannedTask]:
        """A failed point fails the stage; the other points still run."""
        return []

    def poll(self, ctx: StageContext, running: list[Any]) -> list[PlannedTask]:
        """Nothing to watch."""
        return []

    def finish(self, ctx: StageContext) -> str:
        """Record every measured point; ``done`` when every point was measured."""
        tasks = ctx.ledger.tasks(ctx.campaign_id, stage_id=ctx.stage_id)
        done: dict[tuple[str, str, int], tuple[Any, TrainResult]] = {}
        failed = []
        for t in tasks:
            point = parse_point_key(t.key)
            if point is None:
                continue
            if t.state != TaskState.DONE:
                failed.append(t.key)
                continue
            done[point] = (t, read_result(t.result, f"result of task {t.id} ({t.key})"))
        throughput = {k: float(res.train_graphs_per_s or 0.0) for k, (_, res) in done.items()}
        eff = efficiencies(throughput)
        points = []
        for (mode, prec, n), (t, res) in sorted(done.items()):
            thr = throughput[(mode, prec, n)]
            per_rank = self.spec.batch_size // n if mode == "strong" else self.spec.batch_size
            measured = ScalingPoint(
                mode=mode, precision=prec, ranks=n, nodes=math.ceil(n / self.spec.ranks_per_node),
                batch_per_rank=per_rank, graphs_per_s=thr, step_time_s=per_rank * n / thr if thr > 0 else math.nan,
                efficiency=eff[(mode, prec, n)], peak_memory_bytes=int(res.peak_memory_bytes or 0),
                energy_j_per_step=_energy_per_step(res))
            self._record(ctx, t, measured)
            points.append(measured)
        ctx.shared["scaling"] = [asdict(p) | {"graphs_per_s_per_rank": p.graphs_per_s_per_rank} for p in points]
        if failed or not points:
            self.note = f"not measured: {', '.join(sorted(failed))}" if failed else "no point measured"
            return "failed"
        return "done"

    @staticmethod
    def _record(ctx: StageContext, task: Any, p: ScalingPoint) -> None:
        figures = {"graphs_per_s": p.graphs_per_s, "graphs_per_s_per_rank": p.graphs_per_s_per_rank,
                   "efficiency": p.efficiency, "step_time_s": p.step_time_s,
                   "peak_memory_bytes": float(p.peak_memory_bytes),
                   "energy_j_per_step": math.nan if p.energy_j_per_step is None else p.energy_j_per_step}
        ctx.ledger.add_metrics(task.id, [{"epoch": 0, "split": "train", "head": None, "name": name, "value": v}
                                         for name, v in figures.items() if math.isfinite(v)], replace=True)


def _energy_per_step(res: TrainResult) -> float | None:
    parts = [e for e in (res.energy_gpu_j, res.energy_cpu_j, res.energy_dram_j) if e is not None]
    return sum(parts) / res.steps if parts and res.steps > 0 else None
