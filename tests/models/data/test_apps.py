import json
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

from models.appio import BadInput
from models.data.loader import MultiDatasetLoader
from models.data.store import open_split
from models.demo import run as run_demo
from models.preprocess import run as run_preprocess


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    out = {}
    for name, count in (("demo-emt", 15), ("demo-gfn2", 5), ("demo-gfn1", 5)):
        cfg = d / f"{name}.json"
        res = run_demo({"dataset": name, "output": f"{name}.extxyz", "seed": 3, "count": count}, cfg)
        assert res["count"] == count and len(res["sha256"]) == 64
        out[name] = Path(res["output"])
    return d, out


def test_demo_is_deterministic_sharded_and_two_fidelities(demo_files, tmp_path):
    _d, files = demo_files
    r1 = run_demo(
        {"dataset": "demo-gfn2", "output": "a.extxyz", "seed": 3, "start": 0, "count": 2}, tmp_path / "c.json"
    )
    r2 = run_demo(
        {"dataset": "demo-gfn2", "output": "b.extxyz", "seed": 3, "start": 2, "count": 3}, tmp_path / "c.json"
    )
    whole = ase.io.read(files["demo-gfn2"], ":")
    parts = ase.io.read(r1["output"], ":") + ase.io.read(r2["output"], ":")
    assert [a.get_potential_energy() for a in parts] == pytest.approx(
        [a.get_potential_energy() for a in whole]
    )
    gfn1 = ase.io.read(files["demo-gfn1"], ":")
    for a, b in zip(whole, gfn1, strict=True):
        np.testing.assert_allclose(a.positions, b.positions)
        assert a.get_potential_energy() != pytest.approx(b.get_potential_energy(), abs=1e-3)
    with pytest.raises(BadInput, match="not a demo dataset"):
        run_demo({"dataset": "omat24", "output": "x.extxyz"}, tmp_path / "c.json")


def test_preprocess_end_to_end_filters_and_skips(demo_files, tmp_path):
    _d, files = demo_files
    # an extra file with outliers: a huge force, two overlapping atoms, a NaN energy, a duplicate
    good = ase.io.read(files["demo-emt"], ":")
    bad_force = good[0].copy()
    bad_force.calc = good[0].calc
    bad_force.calc.results["forces"] = good[0].get_forces() * 0 + 100.0
    overlap = good[1].copy()
    overlap.positions[1] = overlap.positions[0] + 0.1
    from ase.calculators.singlepoint import SinglePointCalculator

    overlap.calc = SinglePointCalculator(overlap, energy=1.0, forces=np.zeros((len(overlap), 3)))
    nan_e = good[2].copy()
    nan_e.calc = SinglePointCalculator(nan_e, energy=float("nan"), forces=np.zeros((len(nan_e), 3)))
    ase.io.write(tmp_path / "outliers.extxyz", [bad_force, overlap, nan_e, good[3]], format="extxyz")
    cfg = {
        "output_dir": "graphs",
        "datasets": [
            {"name": "demo-emt", "inputs": [str(files["demo-emt"]), "outliers.extxyz"]},
            {"name": "demo-gfn2", "inputs": [str(files["demo-gfn2"])]},
        ],
        "cutoff": 4.5, "max_neighbours": 20, "split": {"train": 0.6, "val": 0.2, "test": 0.2}, "seed": 1,
    }  # fmt: skip
    cfg_path = tmp_path / "pp.json"
    cfg_path.write_text(json.dumps(cfg))
    res = run_preprocess(cfg, cfg_path)
    emt = res["datasets"]["demo-emt"]
    assert emt["read"] == 19 and emt["kept"] == 15
    assert emt["filtered"] == {
        "unlabelled": 0,
        "nonfinite": 1,
        "max_force": 1,
        "min_distance": 1,
        "duplicate": 1,
    }
    assert sum(emt["counts"].values()) == 15 and not res["skipped"]
    assert {29, 47, 79, 28, 46, 78, 13} >= set(emt["elements"])
    assert all(len(f["sha256"]) == 64 for f in res["output_files"])
    stores = []
    for split, n in emt["counts"].items():
        s = open_split(tmp_path / "graphs", "demo-emt", split, dtype=torch.float64)
        assert len(s) == n and s.head_id == 100 and s.attrs["cutoff"] == 4.5
        if n:
            b = s.get_batch(range(n))
            refs = s.reference_energies
            eref = torch.tensor(
                [sum(refs[int(z)] for z in b.z[b.batch == g]) for g in range(n)], dtype=torch.float64
            )
            torch.testing.assert_close(b.eref, eref)
            stores.append(s)
    stores.append(open_split(tmp_path / "graphs", "demo-gfn2", "train"))
    batches = list(MultiDatasetLoader(stores, 4, sampling="temperature", temperature=2.0, epoch_size=24))
    assert sum(b.num_graphs for b in batches) == 24
    again = run_preprocess(cfg, cfg_path)
    assert again["skipped"] and again["content_hash"] == res["content_hash"]


def test_cli_bad_input_exit_code(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"output_dir": "o", "datasets": [{"name": "nope", "inputs": ["x"]}]}))
    p = subprocess.run(
        [sys.executable, "-m", "models.preprocess", "--config", str(cfg)], capture_output=True, text=True
    )
    assert p.returncode == 2 and "datasets[0].name" in p.stderr and "demo-emt" in p.stderr
