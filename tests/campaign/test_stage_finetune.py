"""The fine-tune stage end to end: downstream data, fine-tuned and scratch models side by side, lineage."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from campaign.dispatch import make_dispatcher
from campaign.ledger import Ledger
from campaign.recipe import RecipeError, parse_recipe
from campaign.stages.base import StageContext
from campaign.stages.finetune import FinetuneStage
from campaign.steer import Steerer
from campaign.taskqueue import TaskQueue
from campaign.tasks import TaskState
from db import models as m
from db.engine import transaction
from tests.models.screen.conftest import save_tiny

RECIPE = """\
campaign: ft
stages:
  finetune:
    model: {model}
    tasks:
      - name: gap
        dataset: xtb-molecules
        target: gap
        count: 24
        epochs: 2
        batch_size: 8
"""


@pytest.mark.slow
def test_finetune_stage_end_to_end(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ledger = Ledger(engine)
    cid = ledger.open_campaign(name="ft", recipe_text="x", recipe_hash="h", site="local").id
    path = tmp_path / "pre.pt"
    art = ledger.add_artifact(path, "checkpoint", sha256=save_tiny(path, 0))
    with transaction(ledger.Session) as s:
        row = m.Model(campaign_id=cid, name="pre", role="promoted", family="painn",
                      hyperparameters={"hidden": 8, "cutoff": 4.0}, checkpoint_id=art.id, metrics={"objective": 1.0})
        s.add(row)
        s.flush()
        parent = int(row.id)
    recipe = parse_recipe(RECIPE.format(model=parent))
    ctx = StageContext(recipe=recipe, ledger=ledger, campaign_id=cid, stage_id=ledger.stage(cid, "ft", "finetune").id,
                       workdir=tmp_path / "work", site="local")
    dispatcher = make_dispatcher("local", {"max_workers": 2, "retries": 0}, tmp_path / "dispatch")
    try:
        steer = Steerer(TaskQueue(ledger, cid, site="local", executor=dispatcher.name), dispatcher, max_in_flight=2)
        assert steer.run_stage(FinetuneStage(recipe), ctx) == "done"
    finally:
        dispatcher.shutdown()
    with ledger.Session() as s:
        tasks = {t.key: t for t in s.scalars(select(m.Task))}
        models = {r.role: r for r in s.scalars(select(m.Model).where(m.Model.role.in_(["finetuned", "scratch"])))}
        ds = s.scalar(select(m.Dataset).where(m.Dataset.name == "gap"))
        edges = {(e.kind.value, e.src_kind.value, e.src_id, e.dst_kind.value, e.dst_id)
                 for e in s.scalars(select(m.Lineage))}
        n_metrics = len(list(s.scalars(select(m.Metric).where(m.Metric.task_id == tasks["finetune/gap/scratch"].id))))
    assert sorted(tasks) == ["finetune/gap/data", "finetune/gap/pretrained", "finetune/gap/scratch"]
    assert all(t.state == TaskState.DONE for t in tasks.values())
    assert ds is not None and ds.head_id == 1000 and ds.units["energy"] == "eV" and ds.summary["target"] == "gap"
    assert sum(ds.counts.values()) == 24 and ds.fidelity == "xtb"
    ft, sc = models["finetuned"], models["scratch"]
    assert ft.parent_id == parent and sc.parent_id is None
    assert ft.metrics["test_target_mae"] > 0 and sc.metrics["test_target_mae"] > 0
    assert ft.metrics["unit"] == "eV" and ft.metrics["dataset_id"] == ds.id
    assert ("finetuned_from", "model", str(ft.id), "model", str(parent)) in edges
    assert ("input_of", "model", str(parent), "task", ft.task_id) in edges
    assert ("input_of", "dataset", str(ds.id), "task", sc.task_id) in edges
    assert ("output_of", "dataset", str(ds.id), "task", tasks["finetune/gap/data"].id) in edges
    assert n_metrics > 0
    # both trainings saw the same data: the scratch model has the new head only, the fine-tuned one all three
    assert tasks["finetune/gap/pretrained"].spec["config"]["data_root"] == tasks["finetune/gap/scratch"].spec[
        "config"]["data_root"]
    summary = ctx.shared["finetune"]["gap"]
    assert summary["finetuned"] == ft.id and summary["scratch"] == sc.id and summary["mae_ratio"] > 0
    # a fine-tune worse than its baseline is flagged: in the summary, the stage's warnings and its note
    worse = summary["mae_ratio"] < 1.0
    warnings = ledger.stage_config(ctx.stage_id).get("warnings") or {}
    assert summary.get("worse_than_scratch", False) == worse and ("gap" in warnings) == worse
    if worse:
        assert f"fine-tuned model {ft.id} is" in warnings["gap"] and "worse than its from-scratch" in warnings["gap"]


def test_finetune_recipe_validation() -> None:
    with pytest.raises(RecipeError, match="GFN2-xTB property"):
        parse_recipe(RECIPE.format(model="best").replace("dataset: xtb-molecules", "dataset: emt-alloys"))
    with pytest.raises(RecipeError, match="give files"):
        parse_recipe(RECIPE.format(model="best").replace("dataset: xtb-molecules", "dataset: qm9"))
    ok = parse_recipe(RECIPE.format(model="best").replace("dataset: xtb-molecules", "dataset: qm9\n        files: [a.xyz]"))
    assert ok.stages.finetune is not None and ok.stages.finetune.head_of(0) == 1000


def test_a_fine_tune_worse_than_its_baseline_is_worded() -> None:
    """The 3.5x case of the issue, and a fine-tune that helped (no warning), through the stage's own rule."""
    from campaign.stages.finetune import baseline_warning

    worse = {"finetuned": 9, "scratch": 10, "finetuned_mae": 0.35, "scratch_mae": 0.1, "unit": "eV",
             "mae_ratio": 0.1 / 0.35}
    assert baseline_warning(worse) == ("fine-tuned model 9 is 3.5x worse than its from-scratch baseline 10 "
                                       "(test MAE 0.35 vs 0.1 eV)")
    assert baseline_warning({**worse, "finetuned_mae": 0.05, "mae_ratio": 2.0}) is None
    assert baseline_warning({**worse, "mae_ratio": None}) is None
