"""The evaluate stage: each chosen model on each of its datasets' test split, per head, as campaign tasks.

Which models (``stages.evaluate.models``): ``latest`` (default) — the trained models of this campaign when a train
stage made some, else its promoted models (the ones the promote rule selects); ``promoted``; ``trained``; or
model ids. A model's datasets, their stores and heads are those of the run that made it (its task's
``models.train`` config), so a model is judged on the test split of exactly the data it was trained on.

One task per model, key ``evaluate/model-<id>``, app ``models.evaluate`` (see :mod:`models.evaluate`). Recorded
for each (idempotent, also on re-entry, so a driver killed between a result and its recording loses nothing):

* the model row's ``metrics["test"]`` = ``{dataset: {head, head_name, graphs, energy_mae_mev_per_atom, …}}``
  (units in the names: meV/atom, meV/Å, meV/Å^3) and ``metrics["test_split"]``;
* the same figures as rows of the ``metrics`` table (task = the evaluation task, split ``test``, head = the
  dataset's head id, epoch 0), so SQL over ``metrics`` finds them with the training curves;
* ``parity.npz`` as an artifact of kind ``parity``, ``output_of`` the task (the report's parity plots);
* lineage ``input_of`` (model -> task), written with the task.

``ctx.shared["evaluated"]`` = ``{model id: metrics["test"]}``.
"""

from __future__ import annotations

import math
from typing import Any

from campaign.errors import CampaignInputError
from campaign.stages.base import PlannedTask, StageContext, app_config, app_task_config
from campaign.stages.screen import is_selected, training_config
from campaign.tasks import TaskResult, TaskSpec, TaskState
from models.appio import BadInput
from models.contracts.evaluate import EvaluateConfig, EvaluateResult, read_result

#: The figures recorded per dataset (all in the units their names say).
FIGURES = ("energy_mae_mev_per_atom", "energy_rmse_mev_per_atom", "force_mae_mev_per_a", "force_rmse_mev_per_a",
           "stress_mae_mev_per_a3", "stress_rmse_mev_per_a3")


def task_key(model_id: int) -> str:
    """The task key of the evaluation of model ``model_id``."""
    return f"evaluate/model-{model_id}"


class EvaluateStage:
    """Plans one evaluation task per model and records test metrics and parity data."""

    name = "evaluate"
    kind = "evaluate"

    def __init__(self, recipe: Any) -> None:
        self.recipe = recipe
        self.spec = recipe.stages.evaluate
        self.note = ""  # why the stage failed, when it did

    # ------------------------------------------------------------------------------------- models
    def _models(self, ctx: StageContext) -> list[Any]:
        led, spec = ctx.ledger, self.spec
        if isinstance(spec.models, list):
            rows = {r.id: r for r in led.models(ids=spec.models)}
            missing = [i for i in spec.models if i not in rows]
            if missing:
                raise CampaignInputError(f"stages.evaluate.models: no model with id "
                                         f"{', '.join(map(str, missing))} in the database")
            return [rows[i] for i in spec.models]
        roles = {"latest": ("trained", "promoted"), "trained": ("trained",), "promoted": ("promoted",)}[spec.models]
        for role in roles:
            found = [r for r in led.models(campaign_id=ctx.campaign_id, role=role) if is_selected(r)]
            if found:
                return found
        raise CampaignInputError(f"stages.evaluate: this campaign has no {' or '.join(roles)} models to evaluate "
                                 "(run the promote or train stage first, or list model ids)")

    def _task(self, ctx: StageContext, row: Any) -> PlannedTask:
        led = ctx.ledger
        where = f"stages.evaluate: model {row.id} ({row.name})"
        art = led.artifact(row.checkpoint_id) if row.checkpoint_id is not None else None
        if art is None:
            raise CampaignInputError(f"{where} has no checkpoint")
        try:
            made_by = training_config(led, row)
        except BadInput as exc:
            raise CampaignInputError(f"{where}: cannot tell which data it was trained on: {exc}") from None
        workdir = ctx.task_dir("evaluate", f"model-{row.id}")
        config = app_config(EvaluateConfig, {
            "checkpoint": art.path, "data_root": made_by.data_root, "datasets": made_by.datasets,
            "dataset_heads": made_by.dataset_heads, "split": self.spec.split, "batch_size": self.spec.batch_size,
            "precision": self.spec.precision, "device": "auto", "output_dir": str(workdir),
            "max_parity_atoms": self.spec.max_parity_atoms, "threads": 1}, where)
        return PlannedTask(task_key(row.id), TaskSpec(kind="evaluate", app="models.evaluate",
                                                      config=app_task_config(config), workdir=str(workdir)),
                           inputs=(("model", row.id),))

    def start(self, ctx: StageContext) -> list[PlannedTask]:
        """One evaluation task per model."""
        return [self._task(ctx, row) for row in self._models(ctx)]

    # ------------------------------------------------------------------------------------- results
    def _record(self, ctx: StageContext, task: Any) -> dict[str, Any]:
        led = ctx.ledger
        res: EvaluateResult = read_result(task.result, f"result of task {task.id} ({task.key})")
        model_id = int(task.key.rsplit("-", 1)[1])
        test = {name: d.model_dump(mode="json") for name, d in res.datasets.items()}
        row = led.model(model_id)
        if row is not None and (row.metrics or {}).get("test") != test:
            led.save_model({"id": model_id}, update={"metrics": {**(row.metrics or {}), "test": test,
                                                                 "test_split": res.split}})
        if res.parity is not None:
            art = led.add_artifact(res.parity.path, "parity", task_id=task.id, sha256=res.parity.sha256)
            led.link("output_of", ("artifact", art.id), ("task", task.id), ctx.campaign_id)
        if not led.has_metrics(task.id):
            led.add_metrics(task.id, [
                {"epoch": 0, "split": res.split, "head": d.head, "name": name, "value": getattr(d, name)}
                for d in res.datasets.values() for name in FIGURES
                if getattr(d, name) is not None and math.isfinite(getattr(d, name))])
        return test

    def on_done(self, ctx: StageContext, task: Any, result: TaskResult) -> list[PlannedTask]:
        """Record the model's test metrics and parity data."""
        self._record(ctx, task)
        return []

    def on_failed(self, ctx: StageContext, task: Any, result: TaskResult | None) -> list[PlannedTask]:
        """A failed evaluation fails the stage; the other models are still evaluated."""
        return []

    def poll(self, ctx: StageContext, running: list[Any]) -> list[PlannedTask]:
        """Nothing to watch."""
        return []

    def finish(self, ctx: StageContext) -> str:
        """``done`` when every model was evaluated; ``ctx.shared["evaluated"]`` = their test metrics."""
        tasks = ctx.ledger.tasks(ctx.campaign_id, stage_id=ctx.stage_id)
        evaluated: dict[int, dict[str, Any]] = {}
        failed = []
        for t in tasks:
            if t.state == TaskState.DONE:
                evaluated[int(t.key.rsplit("-", 1)[1])] = self._record(ctx, t)
            else:
                failed.append(t.key)
        ctx.shared["evaluated"] = evaluated
        if failed or not tasks:
            self.note = f"not evaluated: {', '.join(sorted(failed))}" if failed else "no model to evaluate"
            return "failed"
        return "done"
