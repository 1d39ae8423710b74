"""The active stage end to end, as users run it: ``campaign run`` of a small recipe (preprocess, a two-trial HPO,
promotion of a two-model ensemble, two active-learning rounds on EMT-labelled candidates), then the database, the
named queries and the report read back."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from campaign import api
from campaign.stages.active import spread_compositions
from db.readonly import run_readonly
from tests.reliability.driver_kill import CAMPAIGN_EXE, check_invariants

#: The smallest real loop: 48 demo-EMT structures, two tiny PaiNN trials, a pool of 24 candidates of 2-8 atoms,
#: a held-out set of 6, 4 labels per round, 2 rounds.
ACTIVE_RECIPE = """\
campaign: al-tiny
seed: 0
workdir: runs
site: {name: local, workers: 2}
datasets:
  - {name: demo-emt, count: 48, shards: 1}
hpo_defaults:
  precision: fp64
  max_trials: 2
  trials_in_flight: 2
  epochs: 2
  batch_size: 8
  fixed: {cutoff: 4.0}
stages:
  preprocess: {cutoff: 4.0, max_neighbours: 24, split: [0.6, 0.2, 0.2]}
  hpo:
    - name: painn
      family: painn
      search_space:
        hidden: {type: categorical, choices: [8, 16]}
        layers: {type: int, low: 1, high: 2}
        lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  promote: {top_overall: 2, best_per_family: false, ensemble_k: 2}
  active:
    dataset: demo-emt
    method: emt
    pool: {structures: 24, heldout: 6, shards: 2, min_atoms: 2, max_atoms: 8, elements: [Cu, Ag, Al]}
    select: {rule: RULE, batch: 4}
    finetune: {epochs: 2, batch_size: 4, replay: 0.5}
    stop: {rounds: 2}
    top_k: 3
"""


def write_recipe(where: Path, rule: str = "uncertainty") -> Path:
    path = where / "active.yaml"
    path.write_text(ACTIVE_RECIPE.replace("RULE", rule))
    return path


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    return run_readonly(sql, url=url).rows


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("active")
    recipe = write_recipe(tmp)
    url = f"sqlite:///{tmp / 'c.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAMPAIGN_DB": ""}
    proc = subprocess.run([CAMPAIGN_EXE, "run", str(recipe), "--db", url, "--quiet"], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"url": url, "dir": tmp}


def test_the_loop_runs_every_round_once(loop: dict[str, Any]) -> None:
    url = loop["url"]
    assert check_invariants(url, "al-tiny") == []
    keys = [k for (k,) in rows(url, "SELECT key FROM tasks WHERE key LIKE 'active/%' ORDER BY key")]
    for r in ("r01", "r02"):
        assert {f"active/{r}/label", f"active/{r}/data", f"active/{r}/finetune/m0", f"active/{r}/finetune/m1",
                f"active/{r}/evaluate/m0", f"active/{r}/screen/000"} <= set(keys)
    assert "active/r03/label" not in keys and "active/final/screen/000" in keys
    from campaign.plan import plan
    from campaign.recipe import load_recipe

    (dry,) = [p for p in plan(load_recipe(loop["dir"] / "active.yaml")) if p.stage == "active"]
    assert dry.count == len(keys) == 22  # `campaign run --dry-run` counts what the loop creates
    (config,) = rows(url, "SELECT config FROM stages WHERE kind = 'active'")[0]
    assert json.loads(config)["stopped"] == "2 rounds done"


def test_labels_are_the_selection_never_the_heldout_and_never_twice(loop: dict[str, Any]) -> None:
    url = loop["url"]
    labels = rows(url, "SELECT round, structure_id, status, hit_id, energy_ev FROM labels ORDER BY round, id")
    heldout = [s for r, s, *_ in labels if r == 0]
    assert heldout == [f"gen-0-{i}" for i in range(24, 30)]  # pool indices 24..29: after the 24 candidates
    chosen = [(r, s, hit) for r, s, _, hit, _ in labels if r > 0]
    assert len(chosen) == 8 and len({s for _, s, _ in chosen}) == 8  # no structure labelled twice
    assert all(int(s.rsplit("-", 1)[1]) < 24 for _, s, _ in chosen)
    # each label is a recorded selection hit of its round, ranked by the rule: the largest disagreement first
    for r in (1, 2):
        hits = rows(url, "SELECT h.id, h.structure_id, h.score, h.data FROM screening_hits h JOIN tasks t ON "
                         f"t.id = h.task_id WHERE t.key LIKE 'active/r0{r}/screen/%' ORDER BY h.rank")
        assert [h[1] for h in hits] == [s for q, s, _ in chosen if q == r]
        assert {h[0] for h in hits} == {hit for q, _, hit in chosen if q == r}
        scores = [h[2] for h in hits]
        assert scores == sorted(scores) and all(s < 0 for s in scores)  # -(force disagreement), eV/Å
        assert all(json.loads(h[3])["purpose"] == "selection" for h in hits)
    # the EMT energies are the physics code's: recompute one
    from ase.calculators.emt import EMT

    from models.candidates import CandidateSpec, candidate

    r, s, _, _, energy = labels[-1]
    atoms = candidate(0, int(s.rsplit("-", 1)[1]), CandidateSpec(elements=("Cu", "Ag", "Al"), max_atoms=8,
                                                                  max_species=3))
    atoms.calc = EMT()
    assert energy == pytest.approx(atoms.get_potential_energy(), abs=1e-9)


def test_every_round_makes_a_dataset_version_and_fine_tuned_members(loop: dict[str, Any]) -> None:
    url = loop["url"]
    versions = rows(url, "SELECT version, counts, content_hash FROM datasets WHERE name = 'demo-emt-active' "
                         "ORDER BY version")
    assert [v for v, _, _ in versions] == [1, 2] and versions[0][2] != versions[1][2]
    counts = [json.loads(c) for _, c, _ in versions]
    assert [c["train"] + c["val"] for c in counts] == [4, 8] and all(c["test"] == 6 for c in counts)
    assert Path(rows(url, "SELECT store_path FROM datasets WHERE version = 1 AND name = 'demo-emt-active'")[0][0],
                "demo-emt-active", "train").is_dir()  # the earlier version stays readable
    models = rows(url, "SELECT id, name, parent_id FROM models WHERE role = 'finetuned' ORDER BY name")
    by_name = {n: (i, p) for i, n, p in models}
    assert set(by_name) == {f"demo-emt-active-r0{r}-m{j}" for r in (1, 2) for j in (0, 1)}
    for j in (0, 1):  # round 2 fine-tunes round 1's model
        assert by_name[f"demo-emt-active-r02-m{j}"][1] == by_name[f"demo-emt-active-r01-m{j}"][0]
    ens = rows(url, "SELECT name, model_ids FROM ensembles WHERE name = 'active-r02'")
    assert sorted(json.loads(ens[0][1])) == sorted(by_name[f"demo-emt-active-r02-m{j}"][0] for j in (0, 1))
    # fine-tuned with replay of the pre-training data
    metrics = json.loads(rows(url, "SELECT metrics FROM models WHERE name = 'demo-emt-active-r02-m0'")[0][0])
    assert metrics["replayed_graphs_per_epoch"] > 0 and metrics["active_round"] == 2


def test_the_named_queries_answer_the_two_questions(loop: dict[str, Any]) -> None:
    url = loop["url"]
    per_round = api.named_query("active_rounds", {"campaign": "al-tiny"}, db=url).as_dicts()
    assert [r["round"] for r in per_round] == [0, 1, 2]
    assert [r["labelled"] for r in per_round] == [6, 4, 4] and all(r["models"] == 2 for r in per_round)
    assert all(r["heldout_force_mae_mev_per_a"] > 0 and r["base_test_force_mae_mev_per_a"] > 0 for r in per_round)
    assert per_round[2]["dataset_version"].startswith("demo-emt-active v2 ")
    (hit,) = rows(url, "SELECT h.id FROM screening_hits h JOIN tasks t ON t.id = h.task_id "
                       "WHERE t.key LIKE 'active/final/%' AND h.rank = 1")[0]
    up = api.named_query("active_hit_lineage", {"hit": hit}, db=url).as_dicts()
    steps = {r["step"] for r in up}
    assert {"r02/finetune/m0", "r01/finetune/m0", "r02/label", "r01/label", "r01/data", "r02/data"} <= steps
    assert {"hpo/painn/trial-0000", "preprocess/demo-emt"} <= steps
    # listings and exports of hits are the discoveries; the selections live in the labels' lineage
    assert [h.structure_id for h in api.hits("al-tiny", db=url)] == [
        s for (s,) in rows(url, "SELECT h.structure_id FROM screening_hits h JOIN tasks t ON t.id = h.task_id "
                                "WHERE t.key LIKE 'active/final/%' ORDER BY h.rank")]
    best = api.hits("al-tiny", db=url)[0].atoms()  # exported as the screen stage's hits: energy and forces too
    assert best.get_potential_energy() == pytest.approx(best.info["energy_100"]) and best.get_forces().shape[1] == 3
    made = {r["step"]: r for r in up}
    assert made["r01/label"]["labels_ok"] == 4 and made["r02/data"]["dataset_made"] == "demo-emt-active v2"
    assert made["r02/finetune/m0"]["model_made"] == "demo-emt-active-r02-m0"


def test_the_report_shows_the_rounds(loop: dict[str, Any]) -> None:
    out = loop["dir"] / "report"
    proc = subprocess.run([CAMPAIGN_EXE, "report", "al-tiny", "--out", str(out), "--db", loop["url"]],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    page = (out / "index.html").read_text()
    assert "Active learning" in page and (out / "active.png").is_file()
    assert "held-out force MAE (meV/Å)" in page and "gen-0-" in page


def test_spread_compositions_keeps_the_first_and_spreads() -> None:
    cu, al, ag = 29, 13, 47
    numbers = [[cu, cu], [cu, cu, cu], [al, al], [cu, al], [ag]]
    # pure Cu; pure Al and pure Ag are equally far (the earlier first); then CuAl; the second pure Cu last
    assert spread_compositions(numbers, 3) == [0, 2, 4]
    assert spread_compositions(numbers, 10) == [0, 2, 4, 3, 1]
    assert spread_compositions([], 3) == []


def test_a_dataset_the_models_never_saw_exits_2_naming_the_field(loop: dict[str, Any]) -> None:
    recipe = loop["dir"] / "bad.yaml"
    recipe.write_text("campaign: al-bad\nsite: {name: local, workers: 1}\nstages:\n  active:\n"
                      "    from_campaign: al-tiny\n    dataset: demo-gfn2\n    method: gfn2-xtb\n")
    before = rows(loop["url"], "SELECT COUNT(*) FROM tasks")
    proc = subprocess.run([CAMPAIGN_EXE, "run", str(recipe), "--db", loop["url"], "--quiet"], cwd=loop["dir"],
                          env={**os.environ, "CAMPAIGN_DB": ""}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "stages.active.dataset" in proc.stderr and "demo-gfn2" in proc.stderr
    assert rows(loop["url"], "SELECT COUNT(*) FROM tasks") == before


@pytest.mark.parametrize(("stop", "errors", "want"), [
    ("{rounds: 3}", [900.0, 500.0], None),
    ("{rounds: 3}", [900.0, 500.0, 400.0, 300.0], "3 rounds done"),
    ("{rounds: 9, force_mae_mev_per_a: 450}", [900.0, 500.0, 440.0], "reached the target 450"),
    ("{rounds: 9, force_mae_mev_per_a: 1000}", [900.0], "reached the target 1000"),  # good enough at the start
    ("{rounds: 9, patience: 2}", [900.0, 500.0, 510.0], None),
    ("{rounds: 9, patience: 2}", [900.0, 500.0, 510.0, 505.0], "no better held-out force MAE for 2 rounds"),
])
def test_the_stop_rule(stop: str, errors: list[float], want: str | None) -> None:
    from campaign.recipe import parse_recipe
    from campaign.stages.active import ActiveStage

    stage = ActiveStage(parse_recipe(f"campaign: s\nstages:\n  active:\n    stop: {stop}\n"))
    reason = stage._stop_reason(errors, len(errors) - 1)
    assert (reason is None) if want is None else (reason is not None and want in reason)
