"""The labelling app: real EMT / GFN2-xTB labels of generator candidates, failures kept with their cause."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.calculators.emt import EMT

from models.candidates import CandidateSpec, candidate
from models.contracts.label import LabelConfig
from models.label import label

REPO = Path(__file__).resolve().parents[3]
SOURCE = {"kind": "generator", "seed": 4, "elements": ["Cu", "Al", "Fe"], "min_atoms": 2, "max_atoms": 8, "count": 0}


def test_emt_labels_match_ase_and_failures_are_kept(tmp_path: Path) -> None:
    cfg = LabelConfig.model_validate({"source": SOURCE, "indices": list(range(12)), "method": "emt",
                                      "output": str(tmp_path / "l.extxyz")})
    res = label(cfg)
    spec = CandidateSpec(elements=("Cu", "Al", "Fe"), min_atoms=2, max_atoms=8)
    by_index = {lab["index"]: lab for lab in res["labels"]}
    assert sorted(by_index) == list(range(12)) and res["labelled"] + res["failed"] == 12
    frames = ase.io.read(tmp_path / "l.extxyz", index=":")
    assert [f.info["index"] for f in frames] == [i for i in range(12) if by_index[i]["status"] == "ok"]
    for k in range(12):
        atoms = candidate(4, k, spec)
        lab = by_index[k]
        if "Fe" in atoms.get_chemical_symbols():  # EMT has no iron: recorded, not dropped
            assert lab["status"] == "failed" and lab["cause"] == "unsupported-element" and "Fe" in lab["message"]
            continue
        atoms.calc = EMT()
        assert lab["status"] == "ok" and lab["energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
        frame = next(f for f in frames if f.info["index"] == k)
        np.testing.assert_allclose(frame.get_forces(), atoms.get_forces(), atol=1e-8)
        np.testing.assert_allclose(frame.positions, atoms.positions, atol=1e-8)
        assert frame.info["structure_id"] == f"gen-4-{k}"
    assert res["failed"] >= 1 and res["labelled"] >= 1  # the fixture exercises both paths
    assert res["output"]["sha256"] and res["level_of_theory"] == "EMT (ASE)"


def test_gfn2_labels_a_molecule_and_max_force_rejects(tmp_path: Path) -> None:
    src = {**SOURCE, "elements": ["C", "H", "O"], "periodic": False, "max_atoms": 4}
    cfg = LabelConfig.model_validate({"source": src, "indices": [0, 1], "method": "gfn2-xtb",
                                      "output": str(tmp_path / "x.extxyz"), "max_force": 1e-6})
    res = label(cfg)
    assert [lab["cause"] for lab in res["labels"]] == ["unphysical", "unphysical"]
    assert res["output"] is None and not (tmp_path / "x.extxyz").exists()
    ok = label(cfg.model_copy(update={"max_force": 1e4}))
    assert ok["labelled"] == 2 and all(np.isfinite(lab["energy"]) for lab in ok["labels"])


def test_bad_input_exits_2_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text(json.dumps({"source": SOURCE, "indices": [0], "method": "vasp",
                                                 "output": "o.extxyz"}))
    proc = subprocess.run([sys.executable, "-m", "models.label", "--config", str(tmp_path / "c.json"),
                           "--result", str(tmp_path / "r.json")], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2 and "c.json" in proc.stderr and "method" in proc.stderr
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "o.extxyz").exists()
