"""The evaluate stage on models promoted from real trials: one models.evaluate task per model through the
steerer, test metrics on the model rows and in the metrics table (units in the names), parity artifacts the
report draws, idempotent re-entry, and a model that cannot be evaluated refused with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from campaign.errors import CampaignInputError
from campaign.recipe import parse_recipe
from campaign.report.data import gather
from campaign.stages.evaluate import FIGURES, task_key
from db import models as m
from tests.campaign.test_stage_promote import TrialRun, run_stage, trial_runs  # noqa: F401
from tests.campaign.test_stage_train import _promoted, _snapshot

IN_PROCESS = {"in_process": True}


def _recipe(name: str, section: str = "{}") -> Any:
    return parse_recipe(f"campaign: {name}\nstages:\n  evaluate: {section}\n")


def test_each_promoted_model_is_evaluated_on_its_test_split(engine: Any, trial_runs: list[TrialRun],  # noqa: F811
                                                           tmp_path: Path) -> None:
    ledger, cid, promoted = _promoted(engine, "judged", trial_runs, tmp_path)
    status, (stage, ctx) = run_stage(ledger, cid, _recipe("judged"), "evaluate", tmp_path, dispatch=IN_PROCESS)
    with ledger.Session() as s:
        errors = [a.error for a in s.scalars(select(m.Attempt)) if a.error]
    assert status == "done", (stage.note, errors)
    assert set(ctx.shared["evaluated"]) == set(promoted)
    datasets = set(trial_runs[0].config["datasets"])
    for mid in promoted:
        row = ledger.model(mid)
        test = row.metrics["test"]
        assert set(test) == datasets and row.metrics["test_split"] == "test"
        for name, d in test.items():
            assert d["head_name"] == name and d["graphs"] > 0
            assert 0 < d["energy_mae_mev_per_atom"] <= d["energy_rmse_mev_per_atom"]
            assert 0 < d["force_mae_mev_per_a"] <= d["force_rmse_mev_per_a"]
        task = ledger.get_task_by_key(cid, task_key(mid))
        # the metrics table holds the same figures, per head, split test
        with ledger.Session() as s:
            rows = {(r.head, r.name): r.value for r in s.scalars(select(m.Metric).where(m.Metric.task_id == task.id))}
        for d in test.values():
            for name in FIGURES:
                if d[name] is not None:
                    assert rows[(str(d["head"]), name)] == pytest.approx(d[name])
        # lineage: the model is an input of its evaluation; the parity file an output of it
        arts = ledger.artifacts_of_task(task.id, "parity")
        assert len(arts) == 1 and Path(arts[0].path).is_file()
        with ledger.Session() as s:
            edges = {(e.kind.value, e.src_kind.value, e.src_id, e.dst_id) for e in s.scalars(select(m.Lineage))}
        assert ("input_of", "model", str(mid), task.id) in edges
        assert ("output_of", "artifact", str(arts[0].id), task.id) in edges
    # the report draws the parity of the promoted models and lists their errors in meV
    data = gather(engine, "judged")
    assert {p.dataset for p in data.parity} == datasets
    assert {t.model.split()[0] for t in data.test_metrics} == {str(i) for i in promoted}
    # screening hits carry these errors for their head (the mean over an ensemble's members)
    from campaign.stages.screen import model_test_errors

    errors = model_test_errors(ledger, promoted)
    for name, head in (("metals", 0), ("molecules", 1)):
        maes = [ledger.model(mid).metrics["test"][name]["energy_mae_mev_per_atom"] for mid in promoted]
        assert errors[head]["dataset"] == name
        assert errors[head]["energy_mae_mev_per_atom"] == pytest.approx(sum(maes) / len(maes))
    assert model_test_errors(ledger, [*promoted, 10**6]) == {}  # a member without an evaluation: unknown
    # re-entry records nothing twice
    before = _snapshot(ledger)
    status, _ = run_stage(ledger, cid, _recipe("judged"), "evaluate", tmp_path, dispatch=IN_PROCESS)
    assert status == "done" and _snapshot(ledger) == before


def test_models_that_cannot_be_evaluated_are_refused_with_the_reason(engine: Any, tmp_path: Path) -> None:
    from campaign.ledger import Ledger

    ledger = Ledger(engine)
    cid = ledger.open_campaign(name="empty", recipe_text="campaign: empty", recipe_hash="e", site="local").id
    with pytest.raises(CampaignInputError, match="no trained or promoted models to evaluate"):
        run_stage(ledger, cid, _recipe("empty"), "evaluate", tmp_path)
    with pytest.raises(CampaignInputError, match="no model with id 999"):
        run_stage(ledger, cid, _recipe("empty", "{models: [999]}"), "evaluate", tmp_path)
    with ledger.Session() as s:
        assert s.scalar(select(func.count()).select_from(m.Task)) == 0
