"""The train stage: long training of promoted models at scale, chunked to the site's walltime.

Which models: the promote stage's (``models: promoted``), the promoted models of an earlier campaign in the
database (``from_campaign: NAME``) or explicit model ids (``models: [7, 9]``); ``top: n`` keeps the n best by
objective. Each model's training config is its trial task's ``models.train`` config (``tasks.spec["config"]``:
data, model, optimizer found by the HPO) with the recipe's ``epochs`` and ``precision``, run on ``nodes`` x
``ranks_per_node`` DDP ranks (locally one worker, ranks launched by torchrun), ``auto_resume`` on, and, with
``from_checkpoint``, the weights of the model's checkpoint as the start (``init_from``: fresh optimizer and
schedule).

Chunks. With ``chunk_walltime_s`` each chunk is its own task, key ``train/<model id>/chunk-<n>``, whose config
has ``time_limit_s`` = the chunk walltime: the app stops at an epoch boundary before it and reports
``completed: false``; the stage then plans chunk n+1 with ``resume_from`` = chunk n's ``last.pt`` (model,
optimizer, schedule, samplers and RNG: the chunks together train exactly like one run). A chunk is a new task
rather than the same task retried because a DONE task is final in the state machine, and because each chunk
then keeps its own directory, checkpoints, metrics and attempt rows. Within a chunk, an attempt lost to the
site (walltime, node loss) is retried by the dispatcher and continues from the chunk's own newest ``last.pt``
(``auto_resume`` wins over ``resume_from``). Every chunk's run gets an attempt row of its own.

Recorded per chunk: its checkpoints as artifacts (``output_of`` the chunk task), the checkpoint chain (each
chunk's ``last.pt`` ``derived_from`` the previous chunk's, the first one's ``derived_from`` the promoted
checkpoint it started from), the inputs (``input_of``), and the per-epoch metrics of ``metrics.jsonl`` in the
``metrics`` table (run-level figures under head ``"None"``, as the HPO stage records them). When the last
chunk completes: a ``models`` row, role ``trained`` (``parent_id`` = the promoted model, ``checkpoint_id`` =
the best checkpoint), lineage ``derived_from`` (trained -> promoted model) and ``output_of`` (trained model ->
final chunk task).
Recording is idempotent and also happens on re-entry, so a driver killed between a chunk's result and its
recording loses nothing. ``ctx.shared["trained"]`` = the trained model ids.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from campaign.stages.base import PlannedTask, StageContext, app_config, app_task_config
from campaign.stages.screen import is_selected, model_objective, training_config
from campaign.tasks import ResourceRequest, TaskResult, TaskSpec, TaskState
from models.appio import BadInput
from models.contracts import app_failure
from models.contracts.train import CheckpointRef, TrainConfig, TrainResult, read_result

#: Train-config keys of the trial that a long run must not inherit.
_DROPPED_KEYS = ("resume_from", "init_from", "stop_file", "chunk_epochs", "max_steps", "time_limit_s")

_KEY = re.compile(r"^train/(\d+)/chunk-(\d+)$")


def chunk_key(model_id: int, n: int) -> str:
    """The task key of chunk ``n`` (1-based) of the training of model ``model_id``."""
    return f"train/{model_id}/chunk-{n}"


def parse_chunk_key(key: str) -> tuple[int, int] | None:
    """``(model id, chunk number)`` of a train task key, None for another key."""
    match = _KEY.match(key)
    return (int(match.group(1)), int(match.group(2))) if match else None


def attempt_walltime_s(chunk_walltime_s: float) -> int:
    """Walltime of one chunk attempt: the chunk's time limit plus a grace for what happens outside the app's
    epoch clock (start-up, data loading, the last checkpoint, the one epoch a chunk always runs); past it the
    worker kills the attempt (cause ``walltime``) and the retry continues from the chunk's own checkpoint."""
    return math.ceil(chunk_walltime_s + max(120.0, 0.1 * chunk_walltime_s))


@dataclass
class Source:
    """A model to train and what its training starts from."""

    model_id: int
    name: str
    family: str
    trial_id: int | None
    objective: float | None
    hyperparameters: dict[str, Any]
    base_config: TrainConfig | None
    checkpoint_id: int | None
    checkpoint_path: str | None
    problems: list[str] = field(default_factory=list)


class TrainStage:
    """Plans chunked training tasks for promoted models and records trained models with their lineage."""

    name = "train"
    kind = "train"

    def __init__(self, recipe: Any) -> None:
        self.recipe = recipe
        self.spec = recipe.stages.train
        self.note = ""  # why the stage failed, when it did
        self._sources: dict[int, Source] = {}
        self._problems: dict[int, str] = {}  # model id -> why its training cannot go on
        self._error = ""

    # ------------------------------------------------------------------------------------- sources
    def _resolve(self, ctx: StageContext) -> list[Source]:
        """The models to train, in order (best first for promoted models). Sets ``_error`` when unusable."""
        spec = self.spec
        led = ctx.ledger
        if isinstance(spec.models, list):
            rows = {r.id: r for r in led.models(ids=spec.models)}
            missing = [i for i in spec.models if i not in rows]
            if missing:
                self._error = f"stages.train.models: no model with id {', '.join(map(str, missing))} in the database"
                return []
            models = [rows[i] for i in spec.models]
        else:
            campaign_id = ctx.campaign_id
            if spec.from_campaign is not None:
                cid = led.campaign_id(spec.from_campaign)
                if cid is None:
                    self._error = f"stages.train.from_campaign: no campaign named {spec.from_campaign!r} in the database"
                    return []
                campaign_id = int(cid)
            shared = ctx.shared.get("promoted") if spec.from_campaign is None else None
            found = (led.models(ids=list(shared)) if shared is not None
                     else led.models(campaign_id=campaign_id, role="promoted"))
            models = [r for r in found if is_selected(r)]
            if shared is not None:
                order = {mid: k for k, mid in enumerate(shared)}
                models.sort(key=lambda r: order[r.id])
            else:
                models.sort(key=lambda r: ((r.metrics or {}).get("rank") or math.inf, r.id))
            if not models:
                where = spec.from_campaign or self.recipe.campaign
                self._error = (f"campaign {where!r} has no promoted models to train "
                               "(run a promote stage first, or list model ids in stages.train.models)")
                return []
        if spec.top is not None:
            models = sorted(models, key=lambda r: (model_objective(r), r.id))[: spec.top]
        out = []
        for r in models:
            ckpt = led.artifact(r.checkpoint_id) if r.checkpoint_id else None
            src = Source(model_id=r.id, name=r.name, family=r.family, trial_id=r.trial_id,
                         objective=model_objective(r), hyperparameters=dict(r.hyperparameters or {}),
                         base_config=None, checkpoint_id=r.checkpoint_id,
                         checkpoint_path=ckpt.path if ckpt is not None else None)
            try:
                src.base_config = training_config(led, r)
            except BadInput as exc:
                src.problems.append(f"model {r.id} ({r.name}): no config to train from: {exc}")
            if spec.from_checkpoint and (src.checkpoint_path is None or not Path(src.checkpoint_path).is_file()):
                where = src.checkpoint_path or "none recorded"
                src.problems.append(f"model {r.id} ({r.name}): checkpoint missing ({where}); set "
                                    "stages.train.from_checkpoint: false to train it from scratch")
            out.append(src)
        return out

    # ------------------------------------------------------------------------------------- planning
    def _chunk_task(self, ctx: StageContext, src: Source, n: int, resume_from: str | None) -> PlannedTask:
        spec = self.spec
        assert src.base_config is not None  # sources without one are problems, never planned
        workdir = ctx.task_dir("train", f"model-{src.model_id}", f"chunk-{n}")
        cpu = spec.gpus_per_rank == 0
        cfg = src.base_config.model_dump(mode="json", exclude=set(_DROPPED_KEYS), exclude_none=True)
        cfg.update(epochs=spec.epochs, precision=spec.precision, output_dir=str(workdir), auto_resume=True,
                   device="cpu" if cpu else "auto", gpus_per_rank=max(1, spec.gpus_per_rank),
                   head_groups=spec.head_groups)
        if cpu and not cfg.get("threads"):
            cfg["threads"] = 1  # one core per rank (ResourceRequest.cpus_per_rank)
        if spec.chunk_walltime_s is not None:
            cfg["time_limit_s"] = float(spec.chunk_walltime_s)
        if resume_from is not None:
            cfg["resume_from"] = resume_from
        elif spec.from_checkpoint and src.checkpoint_path:
            cfg["init_from"] = src.checkpoint_path
        config = app_config(TrainConfig, cfg, f"stages.train: chunk {n} of model {src.model_id}")
        walltime = attempt_walltime_s(spec.chunk_walltime_s) if spec.chunk_walltime_s is not None else None
        res = ResourceRequest(nodes=spec.nodes, ranks_per_node=spec.ranks_per_node,
                              gpus_per_rank=spec.gpus_per_rank, walltime_s=walltime)
        return PlannedTask(chunk_key(src.model_id, n),
                           TaskSpec(kind="train", app="models.train",
                                    config=app_task_config(config), workdir=str(workdir),
                                    resources=res, priority=1),
                           inputs=(("model", src.model_id),))

    def _chunks(self, ctx: StageContext, model_id: int) -> list[tuple[int, Any]]:
        """``(n, task)`` of every chunk task of ``model_id`` in this stage, by n."""
        out = []
        for t in ctx.ledger.tasks(ctx.campaign_id, stage_id=ctx.stage_id):
            parsed = parse_chunk_key(t.key)
            if parsed is not None and parsed[0] == model_id:
                out.append((parsed[1], t))
        return sorted(out, key=lambda x: x[0])

    def _advance(self, ctx: StageContext, src: Source, n: int, task: Any) -> list[PlannedTask]:
        """Chunk ``n`` is DONE: record it; plan chunk n+1 or record the trained model."""
        chunks = self._chunks(ctx, src.model_id)
        prev = next((t for k, t in chunks if k == n - 1), None)
        try:
            res = _result(task)
            self._record_chunk(ctx, src, n, task, res, (prev, _result(prev)) if prev is not None else None)
            if res.completed:
                self._record_trained(ctx, src, [(t, _result(t)) for k, t in chunks if k <= n])
                return []
        except BadInput as exc:  # an app that does not keep its contract: that model's training stops
            self._problems[src.model_id] = f"model {src.model_id}: {exc}"
            return []
        last = res.checkpoints.get("last")
        if res.epochs_this_chunk < 1 or last is None:
            self._problems[src.model_id] = (f"model {src.model_id}: chunk {n} made no progress "
                                            f"(stop reason {res.stop_reason!r}); not continuing")
            return []
        if n >= self.spec.epochs:
            self._problems[src.model_id] = f"model {src.model_id}: {n} chunks for {self.spec.epochs} epochs"
            return []
        return [self._chunk_task(ctx, src, n + 1, last.path)]

    # ------------------------------------------------------------------------------- stage protocol
    def start(self, ctx: StageContext) -> list[PlannedTask]:
        """Chunk 1 of every model, or, on re-entry, whatever follows the chunks already done."""
        self._error, self._problems = "", {}
        sources = self._resolve(ctx)
        self._sources = {src.model_id: src for src in sources}
        planned: list[PlannedTask] = []
        for src in sources:
            chunks = self._chunks(ctx, src.model_id)
            if not chunks:
                if src.problems:
                    self._problems[src.model_id] = "; ".join(src.problems)
                    continue
                planned.append(self._chunk_task(ctx, src, 1, None))
                continue
            n, task = chunks[-1]
            if task.state == TaskState.DONE:
                for k, t in chunks[:-1]:  # recorded already unless the driver died in between: idempotent
                    prev = next((p for j, p in chunks if j == k - 1), None)
                    if t.state == TaskState.DONE:
                        try:
                            self._record_chunk(ctx, src, k, t, _result(t),
                                               (prev, _result(prev)) if prev is not None else None)
                        except BadInput as exc:
                            self._problems[src.model_id] = f"model {src.model_id}: {exc}"
                planned += self._advance(ctx, src, n, task)
        return planned

    def on_done(self, ctx: StageContext, task: Any, result: TaskResult) -> list[PlannedTask]:
        """A chunk finished: record it and continue with the next chunk when it did not complete."""
        parsed = parse_chunk_key(task.key)
        if parsed is None or parsed[0] not in self._sources:
            return []
        return self._advance(ctx, self._sources[parsed[0]], parsed[1], task)

    def on_failed(self, ctx: StageContext, task: Any, result: TaskResult | None) -> list[PlannedTask]:
        """A chunk failed for good (its retries are spent): that model's training stops there."""
        parsed = parse_chunk_key(task.key)
        if parsed is not None:
            failure = app_failure(task.result)
            why = failure.message if failure else (result.error if result else None) or "failed"
            self._problems[parsed[0]] = f"model {parsed[0]}: chunk {parsed[1]} failed: {str(why).strip()[-300:]}"
        return []

    def poll(self, ctx: StageContext, running: list[Any]) -> list[PlannedTask]:
        """Nothing to watch while chunks run."""
        return []

    def finish(self, ctx: StageContext) -> str:
        """``done`` when every model has a trained row; puts their ids in ``ctx.shared["trained"]``."""
        if self._error:
            return self._fail(ctx, self._error)
        trained: list[int] = []
        problems = []
        rows: dict[int, int | None] = {}
        for mid in self._sources:
            found = ctx.ledger.models(campaign_id=ctx.campaign_id, role="trained", parent_id=mid)
            rows[mid] = found[0].id if found else None
        for mid, src in self._sources.items():
            done = rows[mid]
            if done is not None:
                trained.append(done)
                continue
            chunks = self._chunks(ctx, mid)
            state = f"chunk {chunks[-1][0]} is {chunks[-1][1].state.value}" if chunks else "no chunk ran"
            problems.append(self._problems.get(mid) or f"model {mid} ({src.name}): not trained ({state})")
        ctx.shared["trained"] = trained
        if problems:
            return self._fail(ctx, "; ".join(problems))
        return "done"

    # ------------------------------------------------------------------------------------ recording
    def _fail(self, ctx: StageContext, reason: str) -> str:
        self.note = reason  # recorded on the stage by the steering loop as its failure reason
        return "failed"

    def _artifact(self, ctx: StageContext, info: CheckpointRef | None, task: Any) -> int | None:
        """The artifact id of a checkpoint named in a result (recorded once; ``task_id`` only when this
        chunk wrote it — a best checkpoint that did not improve stays the earlier chunk's)."""
        if info is None or not Path(info.path).is_file():
            return None
        path = Path(info.path)
        mine = path.is_relative_to(Path(task.spec["workdir"]))
        art = ctx.ledger.add_artifact(path, "checkpoint", task_id=task.id if mine else None,
                                      sha256=info.sha256 or None)
        if mine:
            ctx.ledger.link("output_of", ("artifact", art.id), ("task", task.id), ctx.campaign_id)
        return int(art.id)

    def _record_chunk(self, ctx: StageContext, src: Source, n: int, task: Any, res: TrainResult,
                      prev: tuple[Any, TrainResult] | None) -> None:
        """Chunk ``n``'s checkpoints, lineage and per-epoch metrics (``prev``: chunk n-1's task and result)."""
        led, cid = ctx.ledger, ctx.campaign_id
        self._artifact(ctx, res.checkpoints.get("best"), task)
        last_id = self._artifact(ctx, res.checkpoints.get("last"), task)
        if n == 1:
            led.link("input_of", ("model", src.model_id), ("task", task.id), cid)
            start_id = src.checkpoint_id if task.spec["config"].get("init_from") else None
        else:
            start_id = self._artifact(ctx, prev[1].checkpoints.get("last"), prev[0]) if prev is not None else None
        if start_id is not None:
            led.link("input_of", ("artifact", start_id), ("task", task.id), cid)
            if last_id is not None and last_id != start_id:
                led.link("derived_from", ("artifact", last_id), ("artifact", start_id), cid)
        if not led.has_metrics(task.id):  # run-level rows (head null) get head "None", as the HPO stage's
            led.add_metrics(task.id, [r.model_dump() for r in res.history])

    def _record_trained(self, ctx: StageContext, src: Source, chunks: list[tuple[Any, TrainResult]]) -> int:
        """The trained model's row (metrics of the final chunk, wall time of all) and its lineage."""
        chunk_tasks = [t for t, _ in chunks]
        final, res = chunks[-1]
        best_id = self._artifact(ctx, res.checkpoints.get("best"), final)
        last_id = self._artifact(ctx, res.checkpoints.get("last"), final)
        spec = self.spec
        metrics = {
            **res.model_dump(mode="json", include={"objective", "best_epoch", "best_val_metrics", "last_epoch",
                                                   "stop_reason", "train_graphs_per_s", "world_size", "n_params",
                                                   "precision"}),
            "chunks": len(chunk_tasks), "chunk_task_ids": [t.id for t in chunk_tasks],
            "wall_time_s": sum(r.wall_time_s for _, r in chunks), "epochs": spec.epochs,
            "nodes": spec.nodes, "ranks_per_node": spec.ranks_per_node,
            "initialised_from_checkpoint_id": (src.checkpoint_id
                                               if chunk_tasks[0].spec["config"].get("init_from") else None),
            "last_checkpoint_id": last_id, "parent_objective": src.objective,
        }
        model_id = ctx.ledger.save_model(
            {"campaign_id": ctx.campaign_id, "role": "trained", "parent_id": src.model_id},
            create={"name": f"{src.name}-trained", "family": src.family,
                    "hyperparameters": dict(src.hyperparameters), "trial_id": src.trial_id},
            update={"checkpoint_id": best_id if best_id is not None else last_id, "task_id": final.id,
                    "metrics": metrics})
        ctx.ledger.link("derived_from", ("model", model_id), ("model", src.model_id), ctx.campaign_id)
        ctx.ledger.link("output_of", ("model", model_id), ("task", final.id), ctx.campaign_id)
        return model_id


def _result(task: Any) -> TrainResult:
    """A DONE chunk's result, read through the training app's contract."""
    return read_result(task.result, f"result of task {task.id} ({task.key})")
