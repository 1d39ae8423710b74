"""The fine-tune stage: downstream tasks, each fine-tuned from the pre-trained model and trained from scratch.

For each task of the recipe (``stages.finetune.tasks``):

1. ``finetune/<name>/data`` (kind ``generate``, app ``models.finetune`` with ``prepare_only``): builds the small
   downstream dataset as an ADIOS2 store, labelled by real physics and deterministic by seed (GFN2-xTB
   HOMO-LUMO gap / dipole / energy of molecules, EMT energies of bcc/hcp alloys absent from the fcc-only
   pre-training, or the recipe's files). Recorded as a ``datasets`` row ``output_of`` the task.
2. ``finetune/<name>/pretrained`` (kind ``finetune``): the pre-trained model (``model: best`` = best trained,
   else best promoted; or a model id; ``from_campaign`` for an earlier campaign) with a NEW head (id
   ``head`` or 1000 + position), encoder frozen or not; and ``finetune/<name>/scratch`` (kind ``finetune``,
   unless ``scratch: false``): the same architecture from a fresh initialisation on the same data.
3. Each result becomes a ``models`` row: role ``finetuned`` (``parent_id`` = the pre-trained model, lineage
   ``finetuned_from``) or role ``scratch``, with the test metrics in ``metrics`` (``test_target_mae`` in the
   target's unit, per-head ``test_metrics``, …), the checkpoint as an artifact, lineage model ``output_of`` its
   task, the dataset and the pre-trained model ``input_of`` the tasks, and the per-epoch history in the
   ``metrics`` table.

``ctx.shared["finetune"]`` = ``{task name: {"finetuned": model id, "scratch": model id or None, "target",
"unit", "finetuned_mae", "scratch_mae", "mae_ratio" (scratch / fine-tuned: > 1 means pre-training helped)}}``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from campaign.stages.base import PlannedTask, StageContext, app_config, app_task_config
from campaign.stages.screen import ModelCheckpoint, resolve_models, training_config
from campaign.tasks import TaskResult, TaskSpec, TaskState
from models.appio import BadInput
from models.contracts.finetune import (
    TARGET_UNITS,
    FinetuneConfig,
    FinetuneResult,
    PrepareResult,
    read_prepare_result,
    read_result,
)

_FIDELITY = {"xtb-molecules": "xtb", "emt-alloys": "emt", "files": "downstream"}


class FinetuneStage:
    """Plans data, fine-tune and scratch tasks per downstream task and records the models side by side."""

    name = "finetune"
    kind = "finetune"

    def __init__(self, recipe: Any) -> None:
        self.recipe = recipe
        self.spec = recipe.stages.finetune
        self.parent: ModelCheckpoint | None = None
        self.base: dict[str, Any] = {}  # the parent's pre-training data, for the base-head check (set by start)

    # ---------------------------------------------------------------------------------------- planning
    def _data_task(self, ctx: StageContext, pos: int) -> PlannedTask:
        t = self.spec.tasks[pos]
        root = ctx.task_dir("finetune", t.name, "data")
        kind = "files" if t.files else t.dataset
        assert self.parent is not None
        prep = {"kind": kind, "target": t.target, "count": t.count, "seed": t.seed, "elements": list(t.elements),
                "files": [str(Path(f).expanduser().resolve()) for f in t.files],
                "cutoff": float(self.parent.config.get("cutoff", 5.0)),
                "max_neighbours": (self.recipe.stages.preprocess.max_neighbours
                                   if self.recipe.stages.preprocess is not None else None)}
        cfg = app_config(FinetuneConfig, {"prepare": prep, "prepare_only": True, "data_root": str(root),
                                          "dataset": t.name, "head": self.spec.head_of(pos), "output_dir": str(root)},
                         f"stages.finetune.tasks[{pos}]")
        return PlannedTask(f"finetune/{t.name}/data",
                           TaskSpec(kind="generate", app="models.finetune", config=app_task_config(cfg),
                                    workdir=str(root)))

    def _train_tasks(self, ctx: StageContext, pos: int) -> list[PlannedTask]:
        t = self.spec.tasks[pos]
        assert self.parent is not None
        data_root = str(ctx.task_dir("finetune", t.name, "data"))
        out = []
        variants = [("pretrained", False)] + ([("scratch", True)] if t.scratch else [])
        for variant, scratch in variants:
            workdir = ctx.task_dir("finetune", t.name, variant)
            cfg = app_config(FinetuneConfig, {**(self.base if not scratch else {}),
                "checkpoint": self.parent.path, "data_root": data_root, "dataset": t.name,
                "head": self.spec.head_of(pos), "from_scratch": scratch,
                "freeze_encoder": t.freeze_encoder and not scratch, "epochs": t.epochs,
                "batch_size": t.batch_size, "optimizer": {"lr": t.lr}, "precision": self.spec.precision,
                "patience": t.patience, "output_dir": str(workdir), "seed": t.seed,
                "force_weight": 10.0 if t.target == "energy" else 0.0}, f"stages.finetune.tasks[{pos}]")
            out.append(PlannedTask(f"finetune/{t.name}/{variant}",
                                   TaskSpec(kind="finetune", app="models.finetune", config=app_task_config(cfg),
                                            workdir=str(workdir)),
                                   inputs=(("model", self.parent.model_id),)))
        return out

    def _base_data(self, ctx: StageContext) -> dict[str, Any]:
        """The pre-trained model's training data (its task's ``models.train`` config), so that the fine-tuning
        app can check the base heads before and after; ``{}`` when the model was not made by a training run."""
        assert self.parent is not None
        row = ctx.ledger.model(self.parent.model_id)
        try:
            made_by = training_config(ctx.ledger, row)
        except BadInput:
            return {}
        return {"base_data_root": made_by.data_root, "base_datasets": made_by.datasets,
                "base_dataset_heads": made_by.dataset_heads}

    def _ready(self, ctx: StageContext) -> list[PlannedTask]:
        done = {t.key for t in ctx.ledger.tasks(ctx.campaign_id, stage_id=ctx.stage_id, states=[TaskState.DONE])}
        out = []
        for pos, t in enumerate(self.spec.tasks):
            if f"finetune/{t.name}/data" in done:
                out += self._train_tasks(ctx, pos)
        return out

    def start(self, ctx: StageContext) -> list[PlannedTask]:
        """Resolve the pre-trained model; plan every data task, and the training of tasks whose data exists."""
        self.parent = resolve_models(ctx, self.spec.model, from_campaign=self.spec.from_campaign)[0]
        self.base = self._base_data(ctx)
        return [self._data_task(ctx, pos) for pos in range(len(self.spec.tasks))] + self._ready(ctx)

    # ---------------------------------------------------------------------------------------- results
    def on_done(self, ctx: StageContext, task: Any, result: TaskResult) -> list[PlannedTask]:
        """Record a dataset (then plan its two trainings) or a trained model."""
        if task.kind == "generate":
            self._record_dataset(ctx, task, read_prepare_result(task.result, _where(task)))
            pos = self._position(task.spec["config"]["dataset"])
            return self._train_tasks(ctx, pos)
        self._record_model(ctx, task, read_result(task.result, _where(task)))
        return []

    def on_failed(self, ctx: StageContext, task: Any, result: TaskResult | None) -> list[PlannedTask]:
        """A failed task fails the stage (its partner still runs)."""
        return []

    def _position(self, name: str) -> int:
        return [t.name for t in self.spec.tasks].index(name)

    def _record_dataset(self, ctx: StageContext, task: Any, res: PrepareResult) -> int:
        prep = res.prepared
        row = ctx.ledger.add_dataset(
            name=prep.dataset, head_id=prep.head_id, fidelity=_FIDELITY.get(prep.kind, prep.kind),
            level_of_theory=prep.level_of_theory or None, units={"energy": prep.unit, "target": prep.target},
            counts=prep.counts, elements=prep.elements, store_path=task.spec["config"]["data_root"],
            content_hash=prep.content_hash, task_id=task.id,
            summary=prep.model_dump(mode="json", include={"kind", "target", "unit", "target_stats",
                                                          "reference_energies", "with_forces"}),
        )
        ctx.ledger.link("output_of", ("dataset", row.id), ("task", task.id), ctx.campaign_id)
        return int(row.id)

    def _dataset_id(self, ctx: StageContext, name: str) -> int | None:
        data_task = ctx.ledger.get_task_by_key(ctx.campaign_id, f"finetune/{name}/data")
        found = ctx.ledger.datasets_of_task(data_task.id)
        return found[0].id if found else None

    def _record_model(self, ctx: StageContext, task: Any, res: FinetuneResult) -> int:
        led = ctx.ledger
        cfg = task.spec["config"]
        scratch = bool(cfg.get("from_scratch"))
        role = "scratch" if scratch else "finetuned"
        name = cfg["dataset"]
        t = self.spec.tasks[self._position(name)]
        parent = self.parent
        assert parent is not None
        art = led.add_artifact(res.checkpoint.path, "checkpoint", task_id=task.id,
                               sha256=res.checkpoint.sha256 or None)
        led.link("output_of", ("artifact", art.id), ("task", task.id), ctx.campaign_id)
        dataset_id = self._dataset_id(ctx, name)
        metrics = res.model_dump(mode="json", include={
            "test_target_mae", "test_metrics", "test_loss", "objective", "best_epoch", "epochs_run",
            "trainable_parameters", "wall_time_s", "test_graphs", "train_graphs"})
        metrics.update({"task": name, "target": t.target, "unit": TARGET_UNITS[t.target], "dataset_id": dataset_id,
                        "pretrained_model_id": parent.model_id})
        hyper = {**parent.config, "finetune": {"head": cfg["head"], "freeze_encoder": cfg["freeze_encoder"],
                                               "from_scratch": scratch, "epochs": cfg["epochs"],
                                               "lr": cfg["optimizer"]["lr"], "batch_size": cfg["batch_size"]}}
        model_id = led.save_model(
            {"task_id": task.id, "role": role},
            create={"campaign_id": ctx.campaign_id, "name": f"{name}-{role}", "family": parent.family,
                    "hyperparameters": hyper, "parent_id": None if scratch else parent.model_id},
            update={"checkpoint_id": art.id, "metrics": metrics})
        fresh = not led.has_metrics(task.id)
        led.link("output_of", ("model", model_id), ("task", task.id), ctx.campaign_id)
        if dataset_id is not None:
            led.link("input_of", ("dataset", dataset_id), ("task", task.id), ctx.campaign_id)
        if not scratch:
            led.link("finetuned_from", ("model", model_id), ("model", parent.model_id), ctx.campaign_id)
            led.link("input_of", ("model", parent.model_id), ("task", task.id), ctx.campaign_id)
        if fresh:
            led.add_metrics(task.id, [{**r.model_dump(), "head": "all" if r.head is None else r.head}
                                      for r in res.history])
        return model_id

    def finish(self, ctx: StageContext) -> str:
        """``done`` when every task has its models; puts the side-by-side comparison in ``ctx.shared``."""
        tasks = {t.key: t for t in ctx.ledger.tasks(ctx.campaign_id, stage_id=ctx.stage_id)}
        if not tasks or any(t.state != TaskState.DONE for t in tasks.values()):
            return "failed"
        summary: dict[str, Any] = {}
        for pos, spec_task in enumerate(self.spec.tasks):
            keys = [p.key for p in self._train_tasks(ctx, pos)]
            if any(k not in tasks for k in keys):
                return "failed"
            entry: dict[str, Any] = {"target": spec_task.target, "finetuned": None, "scratch": None}
            data_task = tasks[f"finetune/{spec_task.name}/data"]
            if self._dataset_id(ctx, spec_task.name) is None:  # a result recorded before a crash
                self._record_dataset(ctx, data_task, read_prepare_result(data_task.result, _where(data_task)))
            base_heads = None
            for k in keys:
                task = tasks[k]
                res = read_result(task.result, _where(task))
                have = ctx.ledger.models(task_id=task.id)
                mid = have[0].id if have else self._record_model(ctx, task, res)
                variant = "scratch" if k.endswith("/scratch") else "finetuned"
                entry[variant] = int(mid)
                entry[f"{variant}_mae"] = res.test_target_mae
                if variant == "finetuned":
                    base_heads = res.base_heads
            entry["unit"] = TARGET_UNITS[spec_task.target]
            a, b = entry.get("finetuned_mae"), entry.get("scratch_mae")
            entry["mae_ratio"] = (b / a if isinstance(a, float) and isinstance(b, float) and a > 0
                                  and math.isfinite(b) else None)
            summary[spec_task.name] = entry
            worse = baseline_warning(entry)  # pre-training made it worse: say so
            if worse is not None:
                entry["worse_than_scratch"] = True
            warnings = [w for w in (worse, base_heads_warning(spec_task.name, base_heads)) if w]
            if warnings:
                entry["warnings"] = warnings
                ctx.ledger.update_stage_config(ctx.stage_id, warnings={
                    **(ctx.ledger.stage_config(ctx.stage_id).get("warnings") or {}), spec_task.name: "; ".join(warnings)})
        ctx.shared["finetune"] = summary
        flagged = [n for n, e in summary.items() if e.get("warnings")]
        self.note = (f"fine-tuning flagged on {', '.join(flagged)}: worse than from scratch, or the base heads got "
                     "worse (see the stage's config.warnings)") if flagged else ""
        return "done"


def baseline_warning(entry: dict[str, Any]) -> str | None:
    """The warning for a downstream task whose fine-tuned model did worse on its test split than the same
    architecture trained from scratch (``entry``: the stage's summary of the task), else ``None``."""
    ratio = entry.get("mae_ratio")
    if ratio is None or ratio >= 1.0:
        return None
    return (f"fine-tuned model {entry['finetuned']} is {1 / ratio:.2g}x worse than its from-scratch baseline "
            f"{entry['scratch']} (test MAE {entry['finetuned_mae']:.4g} vs {entry['scratch_mae']:.4g} {entry['unit']})")


#: A base head whose validation error grew by more than this factor during fine-tuning is flagged.
BASE_DEGRADATION = 1.10


def base_heads_warning(task: str, base_heads: dict[str, dict[str, dict[str, float]]] | None) -> str | None:
    """The warning for a fine-tuning that made a base head (pre-training dataset) worse on its validation split
    by more than :data:`BASE_DEGRADATION` in energy or force MAE, else ``None``."""
    worse = []
    for head, fig in sorted((base_heads or {}).items()):
        for name, unit in (("energy_mae_per_atom", "eV/atom"), ("force_mae", "eV/Å")):
            before, after = fig.get("before", {}).get(name), fig.get("after", {}).get(name)
            if before and after and math.isfinite(after) and after > BASE_DEGRADATION * before:
                worse.append(f"head {head} {name.replace('_', ' ')} {before:.4g} -> {after:.4g} {unit}")
    if not worse:
        return None
    return f"fine-tuning on {task} made the base heads worse ({'; '.join(worse)})"


def _where(task: Any) -> str:
    return f"result of task {task.id} ({task.key})"
