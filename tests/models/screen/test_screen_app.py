"""The screening app: deterministic shards, ensemble spread and cap, per-head energies, sources, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
import pytest
import torch

from models.candidates import CandidateSpec, candidates
from models.contracts.screen import ScreenConfig
from models.inference import Predictor
from models.screen import screen
from models.screen_output import read_output

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _config(ckpts: list[tuple[Path, str]], out: Path, **over: Any) -> ScreenConfig:
    raw = {"models": [{"id": k + 1, "checkpoint": str(p), "sha256": h} for k, (p, h) in enumerate(ckpts)],
           "source": {"kind": "generator", "seed": 3, "start": 10, "count": 12, "elements": ["Cu", "Au", "Al"],
                      "min_atoms": 2, "max_atoms": 16},
           "head": 100, "top_k": 4, "max_atoms_per_batch": 40, "output": str(out), "write_forces": True}
    raw.update(over)
    return ScreenConfig.model_validate(raw)


def test_shard_reruns_identically_and_writes_its_output(tiny_checkpoints, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = screen(_config(tiny_checkpoints, tmp_path / "a.bp"))
    b = screen(_config(tiny_checkpoints, tmp_path / "b.bp"))
    assert a["structures"] == 12 and a["batches"] > 1 and a["heads"] == [100, 101]
    assert json.dumps(a["top"], sort_keys=True) == json.dumps(b["top"], sort_keys=True)
    arr_a, meta = read_output(tmp_path / "a.bp")
    arr_b, _ = read_output(tmp_path / "b.bp")
    for k in arr_a:
        np.testing.assert_array_equal(arr_a[k], arr_b[k], err_msg=k)
    assert meta["heads"] == [100, 101] and meta["head"] == 100 and meta["models"] == [1, 2]
    assert arr_a["energy"].shape == (12, 2) and arr_a["forces"].shape == (int(arr_a["natoms"].sum()), 3)
    np.testing.assert_array_equal(arr_a["index"], np.arange(10, 22))
    np.testing.assert_allclose(arr_a["score"], arr_a["energy"][:, 0] / arr_a["natoms"])
    # ensemble spread: two different models disagree, the uncertainty is the std of the energy per atom
    assert np.all(arr_a["uncertainty"] > 0)
    np.testing.assert_allclose(arr_a["uncertainty"], arr_a["energy_std"][:, 0] / arr_a["natoms"])
    # local top-k = the lowest scores, ascending
    want = np.sort(arr_a["score"])[:4]
    np.testing.assert_allclose([h["score"] for h in a["top"]], want)
    hit = a["top"][0]
    assert hit["structure_id"] == f"gen-3-{hit['index']}" and len(hit["positions"]) == hit["natoms"]
    assert set(hit["energies"]) == {"100", "101"}


def test_energies_and_forces_match_each_member(tiny_checkpoints, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = screen(_config(tiny_checkpoints[:1], tmp_path / "one.bp", top_k=12))
    arr, _ = read_output(tmp_path / "one.bp")
    assert np.all(np.isnan(arr["uncertainty"])) and np.all(arr["energy_std"] == 0)
    pred = Predictor.from_checkpoint(tiny_checkpoints[0][0], precision="fp64")
    spec = CandidateSpec(elements=("Cu", "Au", "Al"), min_atoms=2, max_atoms=16)
    atoms = next(iter(candidates(3, 10, 1, spec)))
    from models.screen import block_from_atoms

    block = block_from_atoms([(atoms, 10, "x")], 4.0, 32)
    ref = pred.predict(block.to_batch(), forces=True)
    np.testing.assert_allclose(arr["energy"][0], ref["energy"][0].numpy(), rtol=1e-5, atol=1e-5)
    n = len(atoms)
    np.testing.assert_allclose(arr["forces"][:n], ref["forces"][:, 0].numpy(), rtol=1e-4, atol=1e-5)
    assert res["structures_per_s"] > 0 and res["model_structures_per_s"] >= res["structures_per_s"]


def test_uncertainty_cap_drops_candidates(tiny_checkpoints, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    free = screen(_config(tiny_checkpoints, tmp_path / "free.bp", top_k=12))
    arr, _ = read_output(tmp_path / "free.bp")
    cap = float(np.median(arr["uncertainty"]))
    capped = screen(_config(tiny_checkpoints, tmp_path / "cap.bp", top_k=12, max_uncertainty=cap))
    assert capped["passed"] == int((arr["uncertainty"] <= cap).sum()) < free["passed"]
    assert all(h["uncertainty"] <= cap for h in capped["top"])


def test_files_source(tiny_checkpoints, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = CandidateSpec(elements=("Cu", "Al"), min_atoms=2, max_atoms=10)
    ase.io.write(tmp_path / "in.extxyz", list(candidates(0, 0, 5, spec)), format="extxyz")
    res = screen(_config(tiny_checkpoints[:1], tmp_path / "f.bp", top_k=5,
                         source={"kind": "files", "files": [str(tmp_path / "in.extxyz")], "start": 1, "count": 3}))
    assert res["structures"] == 3
    assert sorted(h["structure_id"] for h in res["top"]) == ["in.extxyz:1", "in.extxyz:2", "in.extxyz:3"]


def test_bad_input_exits_2_and_writes_nothing(tiny_checkpoints, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = _config(tiny_checkpoints[:1], tmp_path / "x.bp").model_dump(mode="json")
    cfg["head"] = 7
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, "-m", "models.screen", "--config", str(tmp_path / "cfg.json"),
                           "--result", str(tmp_path / "r.json")], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 2
    assert "cfg.json" in proc.stderr and "'head'" in proc.stderr
    assert not (tmp_path / "x.bp").exists() and not (tmp_path / "r.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x.bp")]


def test_screening_builds_graphs_as_the_models_were_trained() -> None:
    """The neighbour cap comes from the members' checkpoints (``graph``) when the config sets none: the one they
    share, else none (a shared graph cannot match members trained two ways)."""
    from models.screen import training_cap

    assert training_cap([{"cutoff": 5.0, "max_neighbours": 24}, {"cutoff": 5.0, "max_neighbours": 24}]) == 24
    assert training_cap([{"max_neighbours": 24}, {"max_neighbours": 32}]) is None
    assert training_cap([{}, {}]) is None and training_cap([{"max_neighbours": None}]) is None


def test_acquisition_criteria_rank_what_the_members_say(tiny_checkpoints, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``uncertainty`` ranks by the members' own force disagreement, recomputed here member by member;
    ``exclude`` never returns a labelled index; ``random`` is the same draw whatever the shard layout."""
    from models.screen import block_from_atoms

    res = screen(_config(tiny_checkpoints, tmp_path / "u.bp", top_k=5, criterion="uncertainty"))
    assert res["criterion"] == "uncertainty"
    members = [Predictor.from_checkpoint(p, precision="fp64") for p, _ in tiny_checkpoints]
    spec = CandidateSpec(elements=("Cu", "Au", "Al"), min_atoms=2, max_atoms=16)
    spread = {}
    for k, atoms in enumerate(candidates(3, 10, 12, spec)):
        block = block_from_atoms([(atoms, 10 + k, "x")], 4.0, 32)
        f = np.stack([m.predict(block.to_batch(), forces=True)["forces"][:, 0].numpy() for m in members])
        spread[10 + k] = float(np.linalg.norm(f.std(axis=0), axis=-1).max())
    want = sorted(spread, key=lambda i: -spread[i])[:5]
    assert [h["index"] for h in res["top"]] == want
    np.testing.assert_allclose([h["force_uncertainty"] for h in res["top"]], [spread[i] for i in want], rtol=1e-4)

    excl = screen(_config(tiny_checkpoints, tmp_path / "x.bp", top_k=5, criterion="uncertainty", exclude=want[:2]))
    assert excl["excluded"] == 2 and [h["index"] for h in excl["top"]] == sorted(
        set(spread) - set(want[:2]), key=lambda i: -spread[i])[:5]

    one = screen(_config(tiny_checkpoints, tmp_path / "r1.bp", top_k=3, criterion="random", criterion_seed=5))
    halves = [screen(_config(tiny_checkpoints, tmp_path / f"r2{k}.bp", top_k=3, criterion="random", criterion_seed=5,
                             source={**_config(tiny_checkpoints, tmp_path / "t").source.model_dump(),
                                     "start": start, "count": 6}))["top"] for k, start in enumerate((10, 16))]
    merged = sorted(halves[0] + halves[1], key=lambda h: h["score"])[:3]
    assert [h["index"] for h in one["top"]] == [h["index"] for h in merged]

    lcb = screen(_config(tiny_checkpoints, tmp_path / "l.bp", top_k=12, criterion="lcb", kappa=2.0))
    for h in lcb["top"]:
        assert h["score"] == pytest.approx(h["energy_per_atom"] - 2.0 * h["uncertainty"])
    with pytest.raises(ValueError, match="ensemble"):
        _config(tiny_checkpoints[:1], tmp_path / "y.bp", criterion="uncertainty")


def test_structure_force_spread_reduces_per_structure() -> None:
    from models.acquisition import structure_force_spread

    per_atom = np.array([1.0, 3.0, 2.0, 0.5, 0.5])
    natoms = np.array([3, 2])
    np.testing.assert_allclose(structure_force_spread(per_atom, natoms, "max"), [3.0, 0.5])
    np.testing.assert_allclose(structure_force_spread(per_atom, natoms, "mean"), [2.0, 0.5])
    np.testing.assert_allclose(structure_force_spread(per_atom, natoms, "sum"), [6.0, 1.0])
    with pytest.raises(ValueError, match="max, mean or sum"):
        structure_force_spread(per_atom, natoms, "median")
