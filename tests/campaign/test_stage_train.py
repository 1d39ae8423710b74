"""The train stage on promoted models from real trials: chunked training continued from checkpoints, the
checkpoint chain, metrics, trained-model rows, idempotent re-entry, models from an earlier campaign, and
``init_from`` / ``auto_resume`` of the training app that the stage relies on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import delete, func, select

from campaign.ledger import Ledger
from campaign.recipe import parse_recipe
from campaign.stages.train import chunk_key
from campaign.tasks import TaskState
from db import models as m
from db.engine import transaction
from models import checkpoint
from models.appio import BadInput
from models.atomic_files import sha256_file
from models.contracts.train import parse_config
from models.train import run
from tests.campaign.test_stage_promote import TrialRun, hpo_campaign, run_stage, trial_runs  # noqa: F401

#: Chunks run as single-rank models.train calls inside the local pool's worker (no Python start-up per chunk).
IN_PROCESS = {"in_process": True}


def _train(cfg: dict[str, Any]) -> dict[str, Any]:
    return run(parse_config(cfg, "run.json"), "run.json")


def _promoted(engine: Any, name: str, runs: list[TrialRun], workdir: Path) -> tuple[Ledger, int, list[int]]:
    ledger, cid = hpo_campaign(engine, name, runs, workdir)
    recipe = parse_recipe(f"campaign: {name}\nstages:\n  promote: {{top_overall: 1, ensemble_k: 2}}\n")
    status, (stage, ctx) = run_stage(ledger, cid, recipe, "promote", workdir)
    assert status == "done", stage.note
    return ledger, cid, list(ctx.shared["promoted"])


def _snapshot(ledger: Ledger) -> dict[str, int]:
    with ledger.Session() as s:
        return {t.__tablename__: int(s.scalar(select(func.count()).select_from(t)) or 0)
                for t in (m.Task, m.Attempt, m.Model, m.Metric, m.Lineage, m.Artifact)}


def _edges(ledger: Ledger) -> set[tuple[str, str, str, str, str]]:
    with ledger.Session() as s:
        return {(e.kind.value, e.src_kind.value, e.src_id, e.dst_kind.value, e.dst_id)
                for e in s.scalars(select(m.Lineage))}


# ------------------------------------------------------------------------------------ the training app
def test_init_from_starts_from_checkpoint_weights_with_a_fresh_run(trial_runs: list[TrialRun],  # noqa: F811
                                                                   tmp_path: Path) -> None:
    src = trial_runs[0]
    best = src.result["checkpoints"]["best"]["path"]  # type: ignore[index]
    cfg = {**src.config, "model": None, "init_from": best, "precision": "fp32", "epochs": 1,
           "optimizer": {"lr": 1e-12}, "output_dir": str(tmp_path / "init")}
    res = _train(cfg)
    assert res["initialised_from"] == best and res["resumed_from_epoch"] is None and res["last_epoch"] == 0
    start = checkpoint.load(best)["model_state"]
    after = checkpoint.load(res["checkpoints"]["last"]["path"])["model_state"]
    for name, value in start.items():  # fp64 weights cast to fp32; a 1e-12 learning rate leaves them in place
        assert after[name].dtype == (torch.float32 if value.is_floating_point() else value.dtype)
        assert torch.allclose(after[name].double(), value.double(), atol=1e-6), name
    scratch = _train({**cfg, "init_from": None, "model": src.config["model"], "output_dir": str(tmp_path / "s")})
    assert res["objective"] < scratch["objective"]  # the trained weights beat a fresh initialisation
    with pytest.raises(BadInput, match="field 'init_from'"):
        _train({**cfg, "init_from": str(tmp_path / "missing.pt")})


def test_auto_resume_prefers_the_chunks_own_checkpoint_over_resume_from(trial_runs: list[TrialRun],  # noqa: F811
                                                                        tmp_path: Path) -> None:
    base = {**trial_runs[0].config, "epochs": 3, "output_dir": str(tmp_path / "c1"), "precision": "fp32"}
    first = _train({**base, "chunk_epochs": 1})
    chunk2 = {**base, "output_dir": str(tmp_path / "c2"), "auto_resume": True,
              "resume_from": first["checkpoints"]["last"]["path"]}
    cut = _train({**chunk2, "chunk_epochs": 1})  # an attempt of chunk 2 that got one epoch done, then died
    assert cut["resumed_from_epoch"] == 1 and cut["last_epoch"] == 1
    retried = _train(chunk2)  # the retried attempt: its own last.pt (epoch 1) wins over resume_from (epoch 0)
    assert retried["resumed_from_epoch"] == 2 and retried["last_epoch"] == 2 and retried["completed"]


# ---------------------------------------------------------------------------------------- the stage
def test_chunked_training_records_the_checkpoint_chain(engine: Any, trial_runs: list[TrialRun],  # noqa: F811
                                                       tmp_path: Path) -> None:
    ledger, cid, promoted = _promoted(engine, "long", trial_runs, tmp_path)
    recipe = parse_recipe("campaign: long\nstages:\n  train: {top: 1, epochs: 2, ranks_per_node: 1, "
                          "precision: fp32, chunk_walltime_s: 0.001}\n")
    status, (stage, ctx) = run_stage(ledger, cid, recipe, "train", tmp_path, dispatch=IN_PROCESS)
    assert status == "done", stage.note
    with ledger.Session() as s:
        parent = min((s.get(m.Model, i) for i in promoted), key=lambda mo: mo.metrics["objective"])
        tasks = {t.key: t for t in s.scalars(select(m.Task).where(m.Task.kind == "train"))}
        attempts = {t.key: [(a.number, a.exit_cause.value) for a in t.attempts] for t in tasks.values()}
        trained = list(s.scalars(select(m.Model).where(m.Model.role == "trained")))
        arts = {a.id: a for a in s.scalars(select(m.Artifact))}
        metric_epochs = {t.key: sorted({x.epoch for x in s.scalars(select(m.Metric).where(m.Metric.task_id == t.id))})
                         for t in tasks.values()}
    k1, k2 = chunk_key(parent.id, 1), chunk_key(parent.id, 2)
    assert set(tasks) == {k1, k2}  # top: 1 trains the best promoted model only; a 1 ms chunk holds one epoch
    assert attempts == {k1: [(1, "ok")], k2: [(1, "ok")]}  # every chunk is its own attempt row
    c1, c2 = tasks[k1], tasks[k2]
    assert c1.result["completed"] is False and c1.result["stop_reason"] == "time_limit"
    assert c2.result["completed"] is True and c2.result["resumed_from_epoch"] == 1
    parent_ckpt = arts[parent.checkpoint_id].path
    assert c1.spec["config"]["init_from"] == parent_ckpt and "resume_from" not in c1.spec["config"]
    assert c2.spec["config"]["resume_from"] == c1.result["checkpoints"]["last"]["path"]
    for c in (c1, c2):
        cfg = c.spec["config"]
        assert cfg["epochs"] == 2 and cfg["precision"] == "fp32" and cfg["auto_resume"] is True
        assert cfg["time_limit_s"] == 0.001 and cfg["model"]["hidden"] == parent.hyperparameters["hidden"]
        assert c.spec["resources"]["ranks_per_node"] == 1 and c.spec["resources"]["walltime_s"] >= 120
    assert metric_epochs == {k1: [0], k2: [1]}
    # the trained model
    assert len(trained) == 1 and ctx.shared["trained"] == [trained[0].id]
    tm = trained[0]
    assert tm.parent_id == parent.id and tm.trial_id == parent.trial_id and tm.task_id == c2.id
    assert tm.family == parent.family and tm.metrics["chunks"] == 2
    assert tm.metrics["objective"] == c2.result["objective"] and tm.metrics["last_epoch"] == 1
    ck = arts[tm.checkpoint_id]
    assert ck.path == c2.result["checkpoints"]["best"]["path"] and sha256_file(ck.path) == ck.sha256
    # lineage: trained <- promoted, and the checkpoint chain last(2) <- last(1) <- the promoted checkpoint
    last = {c.key: next(a.id for a in arts.values() if a.path == c.result["checkpoints"]["last"]["path"])
            for c in (c1, c2)}
    edges = _edges(ledger)
    assert ("derived_from", "model", str(tm.id), "model", str(parent.id)) in edges
    assert ("output_of", "model", str(tm.id), "task", c2.id) in edges
    assert ("derived_from", "artifact", str(last[k2]), "artifact", str(last[k1])) in edges
    assert ("derived_from", "artifact", str(last[k1]), "artifact", str(parent.checkpoint_id)) in edges
    assert ("input_of", "artifact", str(last[k1]), "task", c2.id) in edges
    assert ("output_of", "artifact", str(last[k1]), "task", c1.id) in edges

    # re-entering the stage (a resumed run) runs nothing and records nothing twice
    before = _snapshot(ledger)
    again, (_, ctx2) = run_stage(ledger, cid, recipe, "train", tmp_path, dispatch=IN_PROCESS)
    assert again == "done" and ctx2.shared["trained"] == ctx.shared["trained"] and _snapshot(ledger) == before

    # a driver that died after chunk 2's result was committed but before it was recorded: re-entry records it
    with transaction(ledger.Session) as s:
        s.execute(delete(m.Lineage).where(m.Lineage.src_kind == m.EntityKind.MODEL,
                                          m.Lineage.src_id == str(tm.id)))
        s.execute(delete(m.Metric).where(m.Metric.task_id == c2.id))
        s.execute(delete(m.Model).where(m.Model.id == tm.id))
    again, (_, ctx3) = run_stage(ledger, cid, recipe, "train", tmp_path, dispatch=IN_PROCESS)
    assert again == "done" and _snapshot(ledger) == before
    with ledger.Session() as s:
        redone = s.scalar(select(m.Model).where(m.Model.role == "trained"))
    assert redone is not None and ctx3.shared["trained"] == [redone.id] and redone.parent_id == parent.id
    assert ("derived_from", "model", str(redone.id), "model", str(parent.id)) in _edges(ledger)


def test_a_later_campaign_trains_models_of_an_earlier_one(engine: Any, trial_runs: list[TrialRun],  # noqa: F811
                                                          tmp_path: Path) -> None:
    ledger, _, promoted = _promoted(engine, "hpo-first", trial_runs, tmp_path / "a")
    cid = ledger.open_campaign(name="later", recipe_text="campaign: later", recipe_hash="l", site="local").id
    recipe = parse_recipe(f"campaign: later\nstages:\n  train: {{models: [{promoted[-1]}], epochs: 1, "
                          "ranks_per_node: 1, from_checkpoint: false}\n")
    status, (stage, ctx) = run_stage(ledger, cid, recipe, "train", tmp_path / "b", dispatch=IN_PROCESS)
    assert status == "done", stage.note
    with ledger.Session() as s:
        (task,) = s.scalars(select(m.Task).where(m.Task.campaign_id == cid))
        trained = s.get(m.Model, ctx.shared["trained"][0])
    assert task.key == chunk_key(promoted[-1], 1) and task.state == TaskState.DONE
    assert "init_from" not in task.spec["config"] and task.result["initialised_from"] is None
    assert trained is not None and trained.campaign_id == cid and trained.parent_id == promoted[-1]
    # by name: the promoted models of campaign hpo-first (the best one), here with its checkpoint missing
    with transaction(ledger.Session) as s:
        for mid in promoted:
            s.get(m.Model, mid).checkpoint_id = None  # type: ignore[union-attr]
    by_name = parse_recipe("campaign: later2\nstages:\n  train: {from_campaign: hpo-first, top: 1, epochs: 1}\n")
    cid2 = ledger.open_campaign(name="later2", recipe_text="campaign: later2", recipe_hash="l2", site="local").id
    status, (stage, _) = run_stage(ledger, cid2, by_name, "train", tmp_path / "c", dispatch=IN_PROCESS)
    assert status == "failed" and "checkpoint missing" in stage.note and "from_checkpoint: false" in stage.note
    unknown = parse_recipe("campaign: later3\nstages:\n  train: {from_campaign: nope}\n")
    status, (stage, _) = run_stage(ledger, cid2, unknown, "train", tmp_path / "d")
    assert status == "failed" and "no campaign named 'nope'" in stage.note


def test_a_chunk_that_fails_for_good_fails_the_stage_with_its_cause(engine: Any,
                                                                     trial_runs: list[TrialRun],  # noqa: F811
                                                                     tmp_path: Path) -> None:
    ledger, cid, promoted = _promoted(engine, "broken", trial_runs, tmp_path)
    with transaction(ledger.Session) as s:  # the trial's data moved away since the HPO ran
        task = s.get(m.Task, s.get(m.Model, promoted[0]).task_id)  # type: ignore[union-attr]
        assert task is not None
        task.spec = {**task.spec, "config": {**task.spec["config"], "data_root": str(tmp_path / "gone")}}
    recipe = parse_recipe(f"campaign: broken\nstages:\n  train: {{models: [{promoted[0]}], epochs: 1, "
                          "ranks_per_node: 1}\n")
    status, (stage, ctx) = run_stage(ledger, cid, recipe, "train", tmp_path, dispatch=IN_PROCESS)
    assert status == "failed" and ctx.shared["trained"] == []
    assert f"model {promoted[0]}: chunk 1 failed" in stage.note and "gone" in stage.note
    with ledger.Session() as s:
        (task,) = s.scalars(select(m.Task).where(m.Task.kind == "train"))
        assert task.state == TaskState.FAILED and all(a.exit_cause.value == "error" for a in task.attempts)
        assert s.scalar(select(func.count()).select_from(m.Model).where(m.Model.role == "trained")) == 0


@pytest.mark.slow
def test_two_rank_chunks_under_torchrun(engine: Any, trial_runs: list[TrialRun], tmp_path: Path) -> None:  # noqa: F811
    ledger, cid, _ = _promoted(engine, "ddp", trial_runs, tmp_path)
    recipe = parse_recipe("campaign: ddp\nstages:\n  train: {top: 1, epochs: 2, ranks_per_node: 2, "
                          "chunk_walltime_s: 0.001}\n")
    status, (stage, ctx) = run_stage(ledger, cid, recipe, "train", tmp_path)
    assert status == "done", stage.note
    with ledger.Session() as s:
        tasks = list(s.scalars(select(m.Task).where(m.Task.kind == "train").order_by(m.Task.key)))
        attempts = [a for t in tasks for a in t.attempts]
    assert [t.result["world_size"] for t in tasks] == [2, 2]
    assert [t.result["completed"] for t in tasks] == [False, True]
    assert [(a.ranks, a.exit_cause.value) for a in attempts] == [(2, "ok"), (2, "ok")]
    assert len(ctx.shared["trained"]) == 1


E2E_RECIPE = """
campaign: e2e-train
site: {name: local, workers: 2}
datasets:
  - {name: demo-emt, count: 24}
  - {name: demo-gfn2, count: 12}
hpo_defaults:
  max_trials: 2
  trials_in_flight: 2
  epochs: 1
  batch_size: 8
  early_stopping: {rule: none}
  fixed: {cutoff: 4.0}
stages:
  preprocess: {cutoff: 4.0, max_neighbours: 12}
  hpo:
    - {name: painn, family: painn, search_space: {hidden: {type: categorical, choices: [8, 16]}}}
    - {name: schnet, family: schnet, search_space: {hidden: {type: categorical, choices: [8, 16]}}}
  promote: {top_overall: 1, best_per_family: true, ensemble_k: 2}
  train: {top: 1, epochs: 2, ranks_per_node: 2, chunk_walltime_s: 0.001}
"""


@pytest.mark.slow
def test_hpo_promote_train_end_to_end_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from campaign import api
    from campaign.runner import run_campaign

    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(E2E_RECIPE)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    out = run_campaign(recipe, db=url)
    assert out.ok, out.stages
    q = ("SELECT (SELECT COUNT(*) FROM tasks), (SELECT COUNT(*) FROM attempts), (SELECT COUNT(*) FROM models), "
         "(SELECT COUNT(*) FROM metrics), (SELECT COUNT(*) FROM lineage), (SELECT COUNT(*) FROM ensembles)")
    counts = api.query(q, db=url).rows
    roles = api.query("SELECT role, COUNT(*) FROM models GROUP BY role ORDER BY role", db=url).rows
    assert roles == [("promoted", 2), ("trained", 1)]  # the best painn and the best schnet; the best one trained
    chain = api.query("SELECT t.key, a.ranks, a.exit_cause FROM tasks t JOIN attempts a ON a.task_id = t.id "
                      "WHERE t.kind = 'train' ORDER BY t.key", db=url).rows
    assert [(r[1], r[2]) for r in chain] == [(2, "ok"), (2, "ok")]
    upstream = api.query("SELECT kind FROM lineage WHERE src_kind = 'model' AND kind = 'promoted_from'", db=url).rows
    assert len(upstream) == 2
    again = run_campaign(recipe, db=url)  # a re-run resumes: nothing runs or is recorded twice
    assert again.ok and api.query(q, db=url).rows == counts
