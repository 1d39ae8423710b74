"""The scaling stage on a model promoted from real trials: one timing run of the training app per point (ranks x
precision x mode) through the steerer (2-rank points under torchrun), throughput and efficiency recorded in the
metrics table and drawn by the report, idempotent re-entry, and a sweep the recipe cannot express refused."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from campaign.errors import CampaignInputError
from campaign.recipe import RecipeError, parse_recipe
from campaign.stages.scaling import efficiencies, point_key
from db import models as m
from models.energy import rapl_readable
from tests.campaign.test_stage_promote import TrialRun, run_stage, trial_runs  # noqa: F401
from tests.campaign.test_stage_train import _promoted, _snapshot


def _recipe(name: str, section: str) -> Any:
    return parse_recipe(f"campaign: {name}\nstages:\n  scaling: {section}\n")


SWEEP = "{ranks: [1, 2], ranks_per_node: 2, modes: [strong, weak], precision: [fp64], batch_size: 4, steps: 6}"


def test_a_sweep_times_each_point_and_records_throughput_and_efficiency(
    engine: Any, trial_runs: list[TrialRun], tmp_path: Path  # noqa: F811
) -> None:
    ledger, cid, promoted = _promoted(engine, "scaled", trial_runs, tmp_path)
    recipe = _recipe("scaled", SWEEP)
    status, (stage, ctx) = run_stage(ledger, cid, recipe, "scaling", tmp_path)
    with ledger.Session() as s:
        errors = [a.error for a in s.scalars(select(m.Attempt)) if a.error]
    assert status == "done", (stage.note, errors)
    best = min(promoted, key=lambda i: ledger.model(i).metrics["objective"])
    points = {(p["mode"], p["precision"], p["ranks"]): p for p in ctx.shared["scaling"]}
    assert set(points) == {(mode, "fp64", n) for mode in ("strong", "weak") for n in (1, 2)}
    for (mode, _, n), p in points.items():
        task = ledger.get_task_by_key(cid, point_key(mode, "fp64", n))
        spec, res = task.spec, task.result
        cfg = spec["config"]
        # the model's own data and architecture, from scratch, for exactly the steps asked
        made_by = ledger.get_task_by_key(cid, _trial_key(ledger, best)).spec["config"]
        assert {k: cfg["model"][k] for k in made_by["model"]} == made_by["model"]
        assert cfg["datasets"] == made_by["datasets"] and cfg["data_root"] == made_by["data_root"]
        assert "init_from" not in cfg and cfg["max_steps"] == 6 and res["steps"] == 6
        assert cfg["batch_size"] == p["batch_per_rank"] == (4 // n if mode == "strong" else 4)
        assert spec["resources"]["ranks_per_node"] == n and res["world_size"] == n
        assert p["graphs_per_s"] == pytest.approx(res["train_graphs_per_s"]) and p["graphs_per_s"] > 0
        assert p["step_time_s"] == pytest.approx(p["batch_per_rank"] * n / p["graphs_per_s"])
        with ledger.Session() as s:
            rows = {r.name: r.value for r in s.scalars(select(m.Metric).where(m.Metric.task_id == task.id))}
        assert rows["graphs_per_s"] == pytest.approx(p["graphs_per_s"])
        assert rows["efficiency"] == pytest.approx(p["efficiency"])
        assert rows["peak_memory_bytes"] > 0
        if rapl_readable():  # energy where the hardware exposes it; nothing recorded (not 0) where it does not
            assert rows["energy_j_per_step"] > 0 and p["energy_j_per_step"] == pytest.approx(rows["energy_j_per_step"])
        else:
            assert "energy_j_per_step" not in rows and p["energy_j_per_step"] is None
    for mode in ("strong", "weak"):
        one, two = points[(mode, "fp64", 1)], points[(mode, "fp64", 2)]
        assert one["efficiency"] == 1.0
        assert two["efficiency"] == pytest.approx(two["graphs_per_s"] / (2 * one["graphs_per_s"]))
    # the report draws the sweep
    from campaign.report.data import gather

    data = gather(engine, "scaled")
    assert {(p.mode, p.ranks) for p in data.scaling} == {(mo, n) for mo in ("strong", "weak") for n in (1, 2)}
    # re-entry records nothing twice
    before = _snapshot(ledger)
    status, _ = run_stage(ledger, cid, recipe, "scaling", tmp_path)
    assert status == "done" and _snapshot(ledger) == before


def _trial_key(ledger: Any, model_id: int) -> str:
    with ledger.Session() as s:
        row = s.get(m.Model, model_id)
        trial = s.get(m.Trial, row.trial_id)
        return str(s.get(m.Task, trial.task_id).key)


def test_efficiency_is_against_the_smallest_point_of_each_sweep() -> None:
    thr = {("strong", "fp32", 2): 100.0, ("strong", "fp32", 4): 150.0, ("strong", "fp32", 8): 200.0,
           ("weak", "fp32", 2): 100.0, ("weak", "fp32", 8): 400.0, ("weak", "bf16", 4): 10.0}
    eff = efficiencies(thr)
    assert eff[("strong", "fp32", 2)] == 1.0
    assert eff[("strong", "fp32", 4)] == pytest.approx(0.75) and eff[("strong", "fp32", 8)] == pytest.approx(0.5)
    assert eff[("weak", "fp32", 8)] == pytest.approx(1.0) and eff[("weak", "bf16", 4)] == 1.0
    assert math.isnan(efficiencies({("weak", "fp32", 1): 0.0, ("weak", "fp32", 2): 5.0})[("weak", "fp32", 2)])


@pytest.mark.parametrize(("section", "message"), [
    ("{ranks: [1, 3], batch_size: 8}", "divisible by every rank count (not by 3)"),
    ("{ranks: [2, 2]}", "rank counts must be distinct"),
    ("{ranks: []}", "give one or more rank counts"),
    ("{modes: [strong, strong]}", "distinct"),
    ("{model: 7, from_campaign: demo-hpo}", "from_campaign goes with model: best"),
    ("{precision: [fp16]}", "fp16"),
])
def test_a_sweep_the_recipe_cannot_express_is_refused(section: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _recipe("bad", section)


def test_no_promoted_model_is_refused_with_the_reason(engine: Any, tmp_path: Path) -> None:
    from campaign.ledger import Ledger

    ledger = Ledger(engine)
    cid = ledger.open_campaign(name="empty", recipe_text="campaign: empty", recipe_hash="e" * 64, site="local").id
    with pytest.raises(CampaignInputError, match="has no promoted model to time"):
        run_stage(ledger, cid, _recipe("empty", "{}"), "scaling", tmp_path)
    with pytest.raises(CampaignInputError, match="no model with id 99"):
        run_stage(ledger, cid, _recipe("empty", "{model: 99}"), "scaling", tmp_path)
