"""The HPO stage end to end: preprocess, two DeepHyper campaigns with real training trials through the local
Parsl-free dispatcher, the ask/tell log, early stopping, results.csv, metrics, checkpoints, and a re-run that
runs nothing again."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from campaign.runner import open_database, run_campaign
from db import models as m
from db.engine import session_factory
from models.atomic_files import sha256_file

REPO = Path(__file__).resolve().parents[2]

RECIPE = """\
campaign: {name}
seed: 3
site: {{name: local, workers: 2}}
workdir: runs
datasets:
  - {{name: demo-emt, count: 16, shards: 1}}
  - {{name: demo-gfn2, count: 8, shards: 1}}
hpo_defaults:
  max_trials: {max_trials}
  trials_in_flight: {in_flight}
  epochs: {epochs}
  batch_size: 8
  fixed: {{cutoff: 4.5, num_rbf: 8}}
  early_stopping: {{rule: median, min_epochs: 1, min_peers: 1}}
stages:
  preprocess: {{cutoff: 4.5, max_neighbours: 12}}
  hpo:
{campaigns}
"""

CAMPAIGN = """\
    - name: {family}
      family: {family}
      search_space:
        hidden: {{type: categorical, choices: [8, 16]}}
        lr: {{type: float, low: 1.0e-3, high: 1.0e-2, log: true}}
"""


def write_recipe(path: Path, *, name: str = "hpo-test", families: tuple[str, ...] = ("schnet", "painn"),
                 max_trials: int = 3, in_flight: int = 2, epochs: int = 2) -> Path:
    """A tiny HPO recipe (a few seconds of training per trial)."""
    path.write_text(RECIPE.format(name=name, max_trials=max_trials, in_flight=in_flight, epochs=epochs,
                                  campaigns="".join(CAMPAIGN.format(family=f) for f in families)))
    return path


@pytest.mark.timeout(600)
def test_hpo_campaigns_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CAMPAIGN_DB", raising=False)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    recipe = write_recipe(tmp_path / "hpo.yaml")
    out = run_campaign(recipe, db=url)
    assert out.ok, out.stages
    assert [(s.kind, s.status) for s in out.stages] == [("preprocess", "done"), ("hpo", "done")]

    engine = open_database(url)
    with session_factory(engine)() as s:
        trials = list(s.scalars(select(m.Trial).order_by(m.Trial.hpo, m.Trial.number)))
        assert [(t.hpo, t.number) for t in trials] == [("painn", 0), ("painn", 1), ("painn", 2),
                                                       ("schnet", 0), ("schnet", 1), ("schnet", 2)]
        for hpo in ("painn", "schnet"):
            mine = [t for t in trials if t.hpo == hpo]
            # asynchronous: two asked together first, the third asked after the first tell
            assert [t.ask_event for t in mine][:2] == [0, 0] and mine[2].ask_event > min(t.tell_event for t in mine[:2])
            assert sorted(t.tell_event for t in mine) == sorted({t.tell_event for t in mine})
        for t in trials:
            assert t.status in ("done", "pruned"), (t.hpo, t.number, t.status, t.failure)
            assert t.objective is not None and t.objective > 0 and t.best_epoch is not None
            assert t.config["cutoff"] == 4.5 and t.config["hidden"] in (8, 16)
            task = s.get(m.Task, t.task_id)
            assert task.state == "DONE" and task.kind == "trial"
            assert task.spec["config"]["model"]["family"] == t.family
            assert task.spec["config"]["model"]["heads"] == [100, 101]
            # the objective is the best epoch's validation loss, as recorded per epoch in the metrics table
            val = {r.epoch: r.value for r in s.scalars(select(m.Metric).where(
                m.Metric.task_id == t.task_id, m.Metric.split == "val", m.Metric.head == "None",
                m.Metric.name == "loss"))}
            assert val and t.objective == pytest.approx(min(val.values()))
            assert t.best_epoch == min(val, key=val.get)
            ckpt = s.scalar(select(m.Artifact).where(m.Artifact.task_id == t.task_id,
                                                     m.Artifact.kind == "checkpoint"))
            assert ckpt is not None and sha256_file(ckpt.path) == ckpt.sha256
        attempts = s.scalar(select(m.Attempt.id).order_by(m.Attempt.id.desc()).limit(1))

    for hpo in ("painn", "schnet"):
        with open(tmp_path / "runs" / "hpo-test" / "hpo" / hpo / "results.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 3 and {"p:hidden", "p:lr", "objective", "job_id", "job_status"} <= set(rows[0])

    # a re-run of the same recipe resumes: everything is done, nothing runs again
    again = run_campaign(recipe, db=url)
    assert again.ok
    with session_factory(engine)() as s:
        assert s.scalar(select(m.Attempt.id).order_by(m.Attempt.id.desc()).limit(1)) == attempts
        assert len(list(s.scalars(select(m.Trial)))) == 6
    engine.dispose()


def test_a_poor_trial_is_stopped_early_through_its_stop_file(tmp_path: Path) -> None:
    """The median rule's decision reaches a running trial as its stop file (unit level: no training)."""
    from campaign.stages.hpo import read_val_curve

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"epoch": 0, "split": "val", "head": null, "name": "loss", "value": 3.0}\n'
                       '{"epoch": 0, "split": "val", "head": 100, "name": "loss", "value": 1.0}\n'
                       '{"epoch": 1, "split": "val", "head": null, "name": "loss", "value": 2.0}\n'
                       '{"epoch": 2, "split": "val", "head": nu')  # a line being written
    assert read_val_curve(metrics) == [3.0, 2.0]
    assert read_val_curve(tmp_path / "missing.jsonl") == []


@pytest.mark.timeout(600)
def test_crashing_trials_are_told_as_failures_with_their_cause(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Every trial of this campaign crashes (a model with no embedding for copper): each is told to the optimizer as
    a failure with its cause, none is lost, and the stage fails because no trial succeeded."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CAMPAIGN_DB", raising=False)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    recipe = write_recipe(tmp_path / "hpo.yaml", name="crash", families=("schnet",), max_trials=2, epochs=1)
    recipe.write_text(recipe.read_text().replace("num_rbf: 8", "num_rbf: 8, max_z: 1"))  # Cu (29) has no embedding
    out = run_campaign(recipe, db=url)
    assert not out.ok and [(s.kind, s.status) for s in out.stages] == [("preprocess", "done"), ("hpo", "failed")]
    engine = open_database(url)
    with session_factory(engine)() as s:
        trials = list(s.scalars(select(m.Trial).order_by(m.Trial.number)))
        assert [t.status for t in trials] == ["failed", "failed"]
        for t in trials:
            assert t.objective is None and t.tell_event is not None
            assert t.failure.startswith("error: ") and "index" in t.failure.lower()
            causes = {a.exit_cause for a in s.scalars(select(m.Attempt).where(m.Attempt.task_id == t.task_id))}
            assert causes == {m.ExitCause.ERROR}
    engine.dispose()


@pytest.mark.timeout(600)
def test_an_hpo_study_extended_in_place_keeps_its_trials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same recipe with max_trials raised runs more trials in the same campaign: the done trials are neither
    run again nor changed, the optimizer asks the new one knowing them, and the change is recorded. Lowering
    max_trials (or changing anything else) is still refused."""
    from campaign.ledger import CampaignConflict

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CAMPAIGN_DB", raising=False)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    recipe = write_recipe(tmp_path / "hpo.yaml", families=("schnet",), max_trials=2, epochs=1)
    assert run_campaign(recipe, db=url).ok
    engine = open_database(url)

    def trials() -> list[tuple[int, dict, float | None, int | None, int | None]]:
        with session_factory(engine)() as s:
            return [(t.number, t.config, t.objective, t.ask_event, t.tell_event)
                    for t in s.scalars(select(m.Trial).order_by(m.Trial.number))]

    first = trials()
    with session_factory(engine)() as s:
        attempts_before = s.scalar(select(func.count()).select_from(m.Attempt))
    assert len(first) == 2

    more = write_recipe(tmp_path / "hpo.yaml", families=("schnet",), max_trials=3, epochs=1)
    assert run_campaign(more, db=url).ok
    after = trials()
    assert after[:2] == first and len(after) == 3
    assert after[2][3] > max(t[4] for t in first)  # asked after both earlier trials were told
    with session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(m.Attempt)) == attempts_before + 1
        camp = s.scalar(select(m.Campaign))
        assert "max_trials: 3" in camp.recipe_text
        hpo = s.scalar(select(m.Stage).where(m.Stage.name == "hpo"))
        [ext] = hpo.config["extensions"]
        assert ext["changes"] == ["hpo schnet: max_trials 2 -> 3"] and ext["from_hash"] != camp.recipe_hash
    with open(tmp_path / "runs" / "hpo-test" / "hpo" / "schnet" / "results.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 3

    fewer = write_recipe(tmp_path / "hpo.yaml", families=("schnet",), max_trials=1, epochs=1)
    with pytest.raises(CampaignConflict, match="different recipe"):
        run_campaign(fewer, db=url)
    engine.dispose()


@pytest.mark.timeout(600)
def test_lineage_of_a_promoted_model_reaches_the_raw_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`campaign lineage MODEL` walks model -> trial -> its task -> the datasets it trained on -> their
    preprocessing task -> the raw structure files and the tasks that generated them, each named."""
    from typer.testing import CliRunner

    from campaign.cli.app import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CAMPAIGN_DB", raising=False)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    recipe = write_recipe(tmp_path / "hpo.yaml", families=("schnet",), max_trials=1, epochs=1)
    recipe.write_text(recipe.read_text() + "  promote: {top_overall: 1, best_per_family: false, ensemble_k: 1}\n"
                      "  evaluate: {}\n")
    assert run_campaign(recipe, db=url).ok
    engine = open_database(url)
    with session_factory(engine)() as s:
        model = s.scalar(select(m.Model).where(m.Model.role == "promoted"))
        trial = s.get(m.Trial, model.trial_id)
    engine.dispose()
    res = CliRunner().invoke(app, ["lineage", str(model.id), "--db", url], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    tree = res.output
    for text in (f"model {model.id} schnet-trial0 (schnet, promoted", "promoted_from trial schnet #0 (done",
                 f"output_of task hpo/schnet/trial-0000 (DONE, {trial.task_id[:8]}",
                 "input_of dataset demo-emt (", "input_of dataset demo-gfn2 (", "output_of task preprocess/demo-emt",
                 "raw-structures", "output_of task generate/demo-emt/000"):
        assert text in tree, text
    as_json = CliRunner().invoke(app, ["lineage", f"model:{model.id}", "--db", url, "--format", "json"])
    kinds = {r["node_kind"] for r in json.loads(as_json.stdout)}
    assert {"model", "trial", "task", "dataset", "artifact"} <= kinds
    listed = CliRunner().invoke(app, ["models", "hpo-test", "--db", url, "--format", "json"])
    [row] = json.loads(listed.stdout)
    assert (row["model"], row["role"], row["family"], row["trial"]) == (model.id, "promoted", "schnet", "schnet #0")
    assert row["objective"] == pytest.approx(trial.objective) and row["checkpoint"].endswith("best.pt")
    bad = CliRunner().invoke(app, ["lineage", "planet:3", "--db", url])
    assert bad.exit_code == 2 and "not a lineage node" in bad.output

    # the model exported, then used with neither the database nor the recipe
    out = tmp_path / "export"
    res = CliRunner().invoke(app, ["export", str(model.id), "--out", str(out), "--db", url])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "model.json").read_text())
    assert set(manifest["files"]) == {"model.pt", "model.pt.sha256", "MODEL_CARD.md"}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    heads = {h["dataset"]: h for h in manifest["heads"]}
    assert set(heads) == {"demo-emt", "demo-gfn2"} and heads["demo-emt"]["level_of_theory"].startswith("EMT")
    assert manifest["graph"] == {"cutoff": 4.5, "max_neighbours": 12} and manifest["model"]["family"] == "schnet"
    card = (out / "MODEL_CARD.md").read_text()
    for text in ("# schnet-trial0 (schnet)", "| demo-emt | EMT", "HPO trial schnet #0", "## Cost",
                 f"objective {trial.objective:.4g}"):
        assert text in card, text
    again = CliRunner().invoke(app, ["export", str(model.id), "--out", str(out), "--db", url])
    assert again.exit_code == 2 and "already exists" in again.output
    assert "energy MAE (meV/atom)" in card  # the evaluate stage's test table, one row per dataset
    assert re.search(r"^\| \d+ \| demo-emt \| \d+ \| [0-9.]+ \|", card, re.MULTILINE), card
    # a fresh process, without the database or the recipe, relaxes a crystal and a molecule with the package
    (tmp_path / "c.db").rename(tmp_path / "elsewhere.db")
    script = f"""
import json
from ase.build import bulk, molecule
from ase.optimize import BFGS
from models.ase_calculator import ModelCalculator
out = {{}}
crystal = bulk("Cu", "fcc", a=3.6, cubic=True)
crystal.rattle(0.05, seed=1)
crystal.calc = ModelCalculator({str(out / "model.pt")!r}, head="demo-emt")
out["crystal"] = bool(BFGS(crystal, logfile=None).run(fmax=0.05, steps=300))
mol = molecule("CH4")
mol.rattle(0.05, seed=2)
mol.calc = ModelCalculator({str(out / "model.pt")!r}, head="demo-gfn2")
out["molecule"] = bool(BFGS(mol, logfile=None).run(fmax=0.05, steps=300))
out["fmax"] = [float((a.get_forces() ** 2).sum(1).max() ** 0.5) for a in (crystal, mol)]
import sys
out["steering_imported"] = sorted(m for m in ("campaign", "db", "sqlalchemy") if m in sys.modules)
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    relaxed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert relaxed["crystal"] and relaxed["molecule"] and max(relaxed["fmax"]) < 0.05, relaxed
    assert relaxed["steering_imported"] == []  # the package needs the model code only
