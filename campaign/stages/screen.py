"""The screen stage: a trained model (or the promoted ensemble) evaluates candidate structures in shards.

Model resolution (:func:`resolve_models`): ``model: best`` = the best trained model of the campaign (lowest
``metrics.objective``), else its best promoted model; ``model: ensemble`` = the campaign's ensemble row (by
name, else the newest); an integer = that ``models.id``. ``from_campaign`` takes ``best``/``ensemble`` from an
earlier campaign instead (recipes that pick up models recorded before).

The stage plans ``shards`` independent ``models.screen`` tasks (kind ``screen``, keys ``screen/00000`` …), each
deterministic by (seed, shard): the generator's candidate ``k`` depends on (seed, k) only, and the shard's index
range on (structures, shards). Each shard streams an ADIOS2 output shard and returns its local top-k and its
throughput by value. When every shard is done the stage merges the top-k by the criterion (lowest energy per
atom of the criterion head, ties by structure id; the uncertainty cap is applied by the shards) and records:

* ``screening_hits`` rows (rank, structure id, formula, atoms, score, energy per atom, uncertainty, head, and
  ``data`` with numbers, positions, cell, pbc, per-head energies, forces when computed, so a hit exports to
  extxyz, see :mod:`campaign.hits`) with lineage hit ``output_of`` its shard task;
* lineage model ``input_of`` every shard task, each output file an artifact (kind ``screen-output``)
  ``output_of`` its task;
* throughput: ``metrics`` rows named ``structures_per_s`` per shard (split ``worker``; and
  ``model_structures_per_s``, inference only) and one aggregate row (split ``aggregate``: all structures over
  the wall time from the first shard's start to the last one's end) on the first shard's task.

``ctx.shared["screen"]`` = ``{"hits": [hit ids], "structures": n, "structures_per_s": aggregate,
"tasks": [task ids], "models": [model ids]}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from campaign.errors import CampaignInputError
from campaign.stages.base import PlannedTask, StageContext, app_config, app_task_config, shard_ranges
from campaign.tasks import ResourceRequest, TaskResult, TaskSpec, TaskState
from models.contracts import validate
from models.contracts.screen import ScreenConfig, ScreenResult, read_result
from models.contracts.train import TrainConfig


@dataclass(frozen=True)
class ModelCheckpoint:
    """A model row resolved to its checkpoint file."""

    model_id: int
    name: str
    role: str
    family: str
    path: str
    sha256: str
    config: dict[str, Any]


def model_objective(row: Any) -> float:
    """A model row's objective (its validation loss), ``inf`` when it has none: the key that ranks models."""
    value = (row.metrics or {}).get("objective")
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else math.inf


def _campaign_id(ctx: StageContext, name: str | None) -> int:
    if name is None:
        return ctx.campaign_id
    cid = ctx.ledger.campaign_id(name)
    if cid is None:
        raise CampaignInputError(f"from_campaign: no campaign named {name!r} in the database")
    return cid


def is_selected(row: Any) -> bool:
    """Whether a model row is one the promote rule still selects (a model an earlier promotion selected and a
    later one dropped carries ``metrics.selected = false``; other roles are always selected)."""
    return (row.metrics or {}).get("selected", True) is not False


def training_config(ledger: Any, row: Any) -> TrainConfig:
    """The ``models.train`` config of the run that made model ``row`` (its task's): the data it was trained on
    (roots, datasets, heads), its hyperparameters and training settings.

    Raises:
        BadInput: the model was not made by a training run (no task, or another app's config), naming the task.
    """
    task = ledger.task(row.task_id) if row.task_id else None
    raw = (task.spec or {}).get("config") if task is not None else None
    return validate(TrainConfig, raw, f"the models.train config of task {row.task_id}")


def best_model_id(ledger: Any, campaign_id: int) -> int | None:
    """The best trained model of a campaign (lowest objective, then lowest id), else its best promoted one."""
    for role in ("trained", "promoted"):
        rows = ledger.models(campaign_id=campaign_id, role=role)
        if role == "promoted":
            rows = [r for r in rows if is_selected(r)]
        rows = [r for r in rows if r.checkpoint_id is not None]
        if rows:
            return int(min(rows, key=lambda r: (model_objective(r), r.id)).id)
    return None


def model_checkpoint(ledger: Any, model_id: int) -> ModelCheckpoint:
    """A model and its checkpoint artifact.

    Raises:
        CampaignInputError: no such model, or it has no checkpoint.
    """
    row = ledger.model(model_id)
    if row is None:
        raise CampaignInputError(f"model {model_id} is not in the database")
    art = ledger.artifact(row.checkpoint_id) if row.checkpoint_id is not None else None
    if art is None:
        raise CampaignInputError(f"model {model_id} ({row.name}) has no checkpoint artifact")
    return ModelCheckpoint(model_id=int(row.id), name=row.name, role=row.role, family=row.family,
                           path=art.path, sha256=art.sha256, config=dict(row.hyperparameters or {}))


def resolve_models(ctx: StageContext, model: str | int, *, from_campaign: str | None = None,
                   ensemble: str | None = None) -> list[ModelCheckpoint]:
    """The model(s) a stage uses: ``best``, ``ensemble`` or an explicit model id (see the module docstring).

    Raises:
        CampaignInputError: nothing to use (with the reason).
    """
    led = ctx.ledger
    if isinstance(model, int):
        return [model_checkpoint(led, model)]
    cid = _campaign_id(ctx, from_campaign)
    where = f"campaign {from_campaign!r}" if from_campaign else "this campaign"
    if model == "best":
        mid = best_model_id(led, cid)
        if mid is None:
            raise CampaignInputError(f"model: best: {where} has no trained or promoted model with a "
                                     "checkpoint (run the train/promote stages, or give a model id)")
        return [model_checkpoint(led, mid)]
    members = led.ensemble_members(cid, ensemble)
    if members is None:
        raise CampaignInputError(f"model: ensemble: {where} has no ensemble"
                                 + (f" named {ensemble!r}" if ensemble else ""))
    return [model_checkpoint(led, i) for i in members]


class ScreenStage:
    """Plans the screening shards, merges their top-k hits and records hits, lineage and throughput."""

    name = "screen"
    kind = "screen"

    def __init__(self, recipe: Any) -> None:
        self.recipe = recipe
        self.spec = recipe.stages.screen
        self.models: list[ModelCheckpoint] = []

    # ---------------------------------------------------------------------------------------- planning
    def _head(self) -> int | None:
        head = self.spec.head
        if isinstance(head, str):
            from models.registry import load_registry

            return int(load_registry().get(head).head_id)
        return head

    def _dataset_stores(self, ctx: StageContext) -> list[tuple[dict[str, Any], int]]:
        """``(store ref, graphs)`` of the datasets to screen (from ctx.shared, else the database)."""
        found: dict[str, tuple[str, dict[str, Any]]] = {}
        for name, d in (ctx.shared.get("datasets") or {}).items():
            found[name] = (d["root"], d.get("counts") or {})
        if not found:
            for row in ctx.ledger.datasets_of_campaign(_campaign_id(ctx, self.spec.from_campaign)):
                found[row.name] = (row.store_path, dict(row.counts or {}))
        names = self.spec.datasets or sorted(found)
        missing = [n for n in names if n not in found]
        if missing or not names:
            raise CampaignInputError(f"stages.screen.datasets: no preprocessed dataset {missing or ''} "
                                     f"(known: {sorted(found) or 'none'})")
        split = self.spec.split
        return [({"root": found[n][0], "dataset": n, "split": split}, int(found[n][1].get(split, 0)))
                for n in names]

    def _sources(self, ctx: StageContext) -> list[dict[str, Any]]:
        spec = self.spec
        if spec.source == "generator":
            return [{"kind": "generator", "seed": spec.seed, "start": start, "count": n,
                     "elements": list(spec.elements), "min_atoms": spec.min_atoms, "max_atoms": spec.max_atoms,
                     "max_species": spec.max_species, "periodic": spec.periodic}
                    for start, n in shard_ranges(spec.structures, spec.shards)]
        if spec.source == "datasets":
            stores = self._dataset_stores(ctx)
            total = min(spec.structures, sum(n for _, n in stores))
            if total == 0:
                raise CampaignInputError(f"stages.screen: the datasets' {spec.split} splits are empty")
            return [{"kind": "stores", "stores": [ref for ref, _ in stores], "start": start, "count": n}
                    for start, n in shard_ranges(total, spec.shards)]
        from pathlib import Path

        files = [str(Path(f).expanduser().resolve()) for f in spec.files]
        for f in files:
            if not Path(f).is_file():
                raise CampaignInputError(f"stages.screen.files: {f} does not exist")
        return [{"kind": "files", "files": files, "start": start, "count": n}
                for start, n in shard_ranges(spec.structures, spec.shards)]

    def _plan(self, ctx: StageContext) -> list[PlannedTask]:
        spec = self.spec
        models = [{"id": mc.model_id, "checkpoint": mc.path, "sha256": mc.sha256} for mc in self.models]
        out = []
        for k, source in enumerate(self._sources(ctx)):
            key = f"screen/{k:05d}"
            workdir = ctx.task_dir("screen", f"{k:05d}")
            cfg = app_config(ScreenConfig, {
                "models": models, "source": source, "head": self._head(), "precision": spec.precision,
                "forces": spec.forces, "write_forces": spec.write_forces,
                "max_atoms_per_batch": spec.max_atoms_per_batch, "top_k": spec.top_k,
                "max_uncertainty": spec.max_uncertainty, "output": str(workdir / f"screen-{k:05d}.bp"),
                "shard": k}, f"stages.screen (shard {k})")
            out.append(PlannedTask(key, TaskSpec(kind="screen", app="models.screen",
                                                 config=app_task_config(cfg),
                                                 workdir=str(workdir),
                                                 resources=ResourceRequest(gpus_per_rank=spec.gpus_per_shard)),
                                   inputs=tuple(("model", mc.model_id) for mc in self.models)))
        return out

    def start(self, ctx: StageContext) -> list[PlannedTask]:
        """Resolve the model(s) and plan every shard (done shards are recognised by key and not re-run)."""
        self.models = resolve_models(ctx, self.spec.model, from_campaign=self.spec.from_campaign,
                                     ensemble=self.spec.ensemble)
        return self._plan(ctx)

    # ---------------------------------------------------------------------------------------- results
    def on_done(self, ctx: StageContext, task: Any, result: TaskResult) -> list[PlannedTask]:
        """Record the shard's output files, its throughput and the model -> task lineage."""
        self._record_shard(ctx, task, _result(task))
        return []

    def on_failed(self, ctx: StageContext, task: Any, result: TaskResult | None) -> list[PlannedTask]:
        """A failed shard (after its retries) fails the stage; nothing to plan."""
        return []

    def _record_shard(self, ctx: StageContext, task: Any, res: ScreenResult) -> None:
        led = ctx.ledger
        for model_id in res.models:
            if model_id is not None:
                led.link("input_of", ("model", model_id), ("task", task.id), ctx.campaign_id)
        for f in res.output.files:
            art = led.add_artifact(f.path, "screen-output", task_id=task.id, sha256=f.sha256)
            led.link("output_of", ("artifact", art.id), ("task", task.id), ctx.campaign_id)
        if not led.has_metrics(task.id, name="structures_per_s", split="worker"):
            rates = {"structures_per_s": res.structures_per_s, "model_structures_per_s": res.model_structures_per_s}
            led.add_metrics(task.id, [{"epoch": 0, "head": "all", "split": "worker", "name": name, "value": value}
                                      for name, value in rates.items() if value is not None])

    def finish(self, ctx: StageContext) -> str:
        """Merge the shards' top-k, record hits and the aggregate throughput; ``failed`` if a shard failed."""
        tasks = [t for t in ctx.ledger.tasks(ctx.campaign_id, stage_id=ctx.stage_id) if t.kind == "screen"]
        if not tasks or any(t.state != TaskState.DONE for t in tasks):
            return "failed"
        tasks.sort(key=lambda t: t.key)
        results = [_result(t) for t in tasks]
        for t, res in zip(tasks, results, strict=True):  # idempotent: recorded before a crash is not re-recorded
            self._record_shard(ctx, t, res)
        ids = [t.id for t in tasks]
        model_ids = [m for m in results[0].models if m is not None]
        structures = sum(r.structures for r in results)
        hit_ids = ctx.ledger.hit_ids(ids)
        spans = ctx.ledger.successful_attempt_spans(ids)
        aggregate = None
        starts = [a for a, _ in spans if a is not None]
        ends = [b for _, b in spans if b is not None]
        if starts and ends:
            wall = (max(ends) - min(starts)).total_seconds()
            aggregate = structures / wall if wall > 0 else None
        if not hit_ids:
            hit_ids = self._record_hits(ctx, list(zip(tasks, results, strict=True)), model_ids)
            rows = []
            if aggregate is not None:
                rows.append({"epoch": 0, "head": "all", "split": "aggregate", "name": "structures_per_s",
                             "value": aggregate})
            per_worker = [r.structures_per_s or 0.0 for r in results]
            rows.append({"epoch": 0, "head": "all", "split": "aggregate", "name": "sum_worker_structures_per_s",
                         "value": sum(per_worker)})
            ctx.ledger.add_metrics(tasks[0].id, rows)
        ctx.shared["screen"] = {"hits": hit_ids, "structures": structures, "structures_per_s": aggregate,
                                "tasks": ids, "models": model_ids}
        return "done"

    def _record_hits(self, ctx: StageContext, shards: list[tuple[Any, ScreenResult]],
                     model_ids: list[int]) -> list[int]:
        pool = [(h, t, res) for t, res in shards for h in res.top]
        pool.sort(key=lambda p: (p[0].score, p[0].structure_id))
        chosen = pool[: self.spec.top_k]
        errors = model_test_errors(ctx.ledger, model_ids)
        hits = [hit_row(t, h, rank, model_ids, criterion=self.spec.criterion,
                        extra={"model_test_error": errors.get(h.head)})
                for rank, (h, t, _) in enumerate(chosen, start=1)]
        return ctx.ledger.add_hits(ctx.campaign_id, hits)


def hit_row(task: Any, hit: Any, rank: int, model_ids: list[int], *, criterion: str,
            extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``screening_hits`` values of ``hit`` (a :class:`~models.contracts.screen.ScreenHit`) found by screening
    task ``task``: its structure, every head's energy and the criterion head's forces in ``data`` (what
    :mod:`campaign.hits` exports), the criterion, the shard and source, the models (``model_id`` when one model
    screened), and ``extra`` entries of ``data``."""
    data = hit.model_dump(mode="json", include={"numbers", "positions", "cell", "pbc", "energies", "index", "sid",
                                                "forces", "force_uncertainty"}, exclude_none=True)
    config = task.spec["config"]
    data.update({"shard": config.get("shard", 0), "models": model_ids, "head_id": hit.head, "criterion": criterion,
                 "source": config["source"]["kind"], **(extra or {})})
    return dict(task_id=task.id, model_id=model_ids[0] if len(model_ids) == 1 else None, rank=rank,
                structure_id=hit.structure_id, formula=hit.formula, natoms=hit.natoms, score=hit.score,
                energy_per_atom=hit.energy_per_atom, uncertainty=hit.uncertainty,
                head=_head_names().get(hit.head, str(hit.head)), data=data)


def model_test_errors(ledger: Any, model_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Per head id, the screening models' errors on the test split of that head's dataset (the evaluate stage's
    ``models.metrics["test"]``): ``{"dataset", "energy_mae_mev_per_atom" (mean over the models), "models":
    {model id: {energy_mae_mev_per_atom, energy_rmse_mev_per_atom, force_mae_mev_per_a}}}``. A head without an
    evaluation for every model is left out (a hit then says its model's error is unknown)."""
    per_head: dict[int, dict[str, Any]] = {}
    for mid in model_ids:
        row = ledger.model(mid)
        for dataset, d in ((row.metrics or {}).get("test") or {} if row is not None else {}).items():
            entry = per_head.setdefault(int(d["head"]), {"dataset": dataset, "models": {}})
            entry["models"][str(mid)] = {k: d.get(k) for k in ("energy_mae_mev_per_atom", "energy_rmse_mev_per_atom",
                                                               "force_mae_mev_per_a")}
    out = {}
    for head, entry in per_head.items():
        if len(entry["models"]) == len(model_ids):
            maes = [v["energy_mae_mev_per_atom"] for v in entry["models"].values()]
            out[head] = {**entry, "energy_mae_mev_per_atom": sum(maes) / len(maes)}
    return out


def _result(task: Any) -> ScreenResult:
    """A DONE shard's result, read through the screening app's contract."""
    return read_result(task.result, f"result of task {task.id} ({task.key})")


def _head_names() -> dict[int, str]:
    from models.registry import load_registry

    return {int(d.head_id): d.name for d in load_registry()}
