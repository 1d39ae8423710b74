"""The screen stage end to end through the Steerer and a local dispatcher: hits, lineage, throughput, reruns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
import pytest
from sqlalchemy import select

from campaign.dispatch import make_dispatcher
from campaign.errors import CampaignInputError
from campaign.hits import export_hits
from campaign.ledger import Ledger
from campaign.recipe import RecipeError, parse_recipe
from campaign.stages.base import StageContext
from campaign.stages.screen import ScreenStage
from campaign.steer import Steerer
from campaign.taskqueue import TaskQueue
from campaign.tasks import TaskState
from db import models as m
from db.engine import transaction
from tests.models.screen.conftest import save_tiny

REPO = Path(__file__).resolve().parents[2]
RECIPE = """\
campaign: scr
stages:
  screen:
    model: {model}
    structures: 10
    shards: 2
    min_atoms: 2
    max_atoms: 12
    elements: [Cu, Au, Al]
    head: 100
    top_k: 4
    seed: 11
    max_atoms_per_batch: 60
{extra}"""


def _models(ledger: Ledger, cid: int, tmp: Path) -> list[int]:
    """Two trained models (objectives 0.5 and 0.2) and an ensemble of both, with real checkpoint files."""
    ids = []
    for k, objective in enumerate((0.5, 0.2)):
        path = tmp / f"model{k}.pt"
        digest = save_tiny(path, k)
        art = ledger.add_artifact(path, "checkpoint", sha256=digest)
        with transaction(ledger.Session) as s:
            row = m.Model(campaign_id=cid, name=f"m{k}", role="trained", family="painn",
                          hyperparameters={"hidden": 8, "cutoff": 4.0}, checkpoint_id=art.id,
                          metrics={"objective": objective})
            s.add(row)
            s.flush()
            ids.append(int(row.id))
    with transaction(ledger.Session) as s:
        s.add(m.Ensemble(campaign_id=cid, name="scr-top2", model_ids=ids, rule={}))
    return ids


def _run(engine: Any, tmp: Path, model: str, extra: str = "") -> tuple[Ledger, int, ScreenStage, str]:
    ledger = Ledger(engine)
    cid = ledger.open_campaign(name="scr", recipe_text="x", recipe_hash="h", site="local").id
    ids = _models(ledger, cid, tmp)
    recipe = parse_recipe(RECIPE.format(model=model, extra=extra))
    stage_row = ledger.stage(cid, "screen", "screen")
    ctx = StageContext(recipe=recipe, ledger=ledger, campaign_id=cid, stage_id=stage_row.id,
                       workdir=tmp / "work", site="local")
    dispatcher = make_dispatcher("local", {"max_workers": 2, "retries": 0}, tmp / "dispatch")
    stage = ScreenStage(recipe)
    try:
        steer = Steerer(TaskQueue(ledger, cid, site="local", executor=dispatcher.name), dispatcher, max_in_flight=2)
        status = steer.run_stage(stage, ctx)
    finally:
        dispatcher.shutdown()
    ctx_shared = ctx.shared
    stage.shared = ctx_shared  # type: ignore[attr-defined]
    stage.ids = ids  # type: ignore[attr-defined]
    return ledger, cid, stage, status


@pytest.mark.slow
def test_screen_stage_best_model(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ledger, cid, stage, status = _run(engine, tmp_path, "best")
    assert status == "done"
    best = stage.ids[1]  # type: ignore[attr-defined]  # the lower objective
    with ledger.Session() as s:
        tasks = sorted(s.scalars(select(m.Task).where(m.Task.campaign_id == cid)), key=lambda t: t.key)
        hits = list(s.scalars(select(m.ScreeningHit).order_by(m.ScreeningHit.rank)))
        edges = {(e.kind.value, e.src_kind.value, e.src_id, e.dst_kind.value, e.dst_id)
                 for e in s.scalars(select(m.Lineage))}
        metrics = list(s.scalars(select(m.Metric).where(m.Metric.name == "structures_per_s")))
        outputs = list(s.scalars(select(m.Artifact).where(m.Artifact.kind == "screen-output")))
    assert [t.key for t in tasks] == ["screen/00000", "screen/00001"]
    assert all(t.state == TaskState.DONE for t in tasks)
    assert [t.spec["config"]["source"]["start"] for t in tasks] == [0, 5]
    assert sum(t.result["structures"] for t in tasks) == 10
    # merged top-k: the 4 lowest energies per atom over both shards, ranked
    pool = sorted((h["score"], h["structure_id"]) for t in tasks for h in t.result["top"])[:4]
    assert [(h.score, h.structure_id) for h in hits] == pool and [h.rank for h in hits] == [1, 2, 3, 4]
    assert all(h.model_id == best and h.head == "demo-emt" and h.uncertainty is None for h in hits)
    assert all(len(h.data["positions"]) == h.natoms and "forces" in h.data for h in hits)
    for h in hits:
        assert ("output_of", "hit", str(h.id), "task", h.task_id) in edges
    for t in tasks:
        assert ("input_of", "model", str(best), "task", t.id) in edges
    assert sorted(x.split for x in metrics) == ["aggregate", "worker", "worker"]
    assert all(x.value > 0 for x in metrics)
    assert outputs and all(("output_of", "artifact", str(a.id), "task", a.task_id) in edges for a in outputs)
    assert stage.shared["screen"]["structures"] == 10  # type: ignore[attr-defined]

    # a shard re-run (same config) gives identical hits and output
    t0 = tasks[0]
    cfg = dict(t0.spec["config"], output=str(tmp_path / "rerun.bp"))
    (tmp_path / "rerun.json").write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, "-m", "models.screen", "--config", str(tmp_path / "rerun.json"),
                           "--result", str(tmp_path / "rerun-result.json")], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    again = json.loads((tmp_path / "rerun-result.json").read_text())
    assert json.dumps(again["top"], sort_keys=True) == json.dumps(t0.result["top"], sort_keys=True)
    from models.screen_output import read_output

    a, _ = read_output(t0.spec["config"]["output"])
    b, _ = read_output(tmp_path / "rerun.bp")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    # export as extxyz
    n = export_hits(ledger.engine, "scr", tmp_path / "hits.extxyz", top=3)
    frames = ase.io.read(tmp_path / "hits.extxyz", index=":")
    assert n == 3 and [f.info["rank"] for f in frames] == [1, 2, 3]
    assert frames[0].get_chemical_formula(mode="hill") == hits[0].formula
    assert frames[0].get_potential_energy() / len(frames[0]) == pytest.approx(hits[0].energy_per_atom)
    with pytest.raises(CampaignInputError, match="no campaign"):
        export_hits(ledger.engine, "nope", tmp_path / "x.extxyz")


@pytest.mark.slow
def test_screen_stage_ensemble_with_cap(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ledger, _, stage, status = _run(engine, tmp_path, "ensemble", "    max_uncertainty: 10.0\n")
    assert status == "done"
    with ledger.Session() as s:
        hits = list(s.scalars(select(m.ScreeningHit).order_by(m.ScreeningHit.rank)))
        task = s.scalar(select(m.Task).where(m.Task.key == "screen/00000"))
    assert len(task.spec["config"]["models"]) == 2
    assert hits and all(h.model_id is None and h.uncertainty is not None and h.uncertainty > 0 for h in hits)
    assert hits[0].data["models"] == stage.ids  # type: ignore[attr-defined]


def test_screen_recipe_validation() -> None:
    with pytest.raises(RecipeError, match="max_uncertainty needs model: ensemble"):
        parse_recipe(RECIPE.format(model="best", extra="    max_uncertainty: 0.1\n"))
    with pytest.raises(RecipeError, match="unknown dataset 'nope'"):
        parse_recipe(RECIPE.format(model="best", extra="").replace("head: 100", "head: nope"))


def test_no_model_is_a_clear_input_error(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ledger = Ledger(engine)
    cid = ledger.open_campaign(name="empty", recipe_text="x", recipe_hash="h", site="local").id
    recipe = parse_recipe(RECIPE.format(model="best", extra=""))
    ctx = StageContext(recipe=recipe, ledger=ledger, campaign_id=cid, stage_id=ledger.stage(cid, "screen",
                       "screen").id, workdir=tmp_path, site="local")
    with pytest.raises(CampaignInputError, match="no trained or promoted model"):
        ScreenStage(recipe).start(ctx)
    recipe = parse_recipe(RECIPE.format(model="best", extra="    from_campaign: ghost\n"))
    with pytest.raises(CampaignInputError, match="ghost"):
        ScreenStage(recipe).start(ctx)
