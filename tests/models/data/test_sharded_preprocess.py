"""Sharded preprocessing: N part tasks + a merge give the single-task result, read as one store."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase.calculators.singlepoint import SinglePointCalculator

from models.appio import BadInput
from models.data.loader import MultiDatasetLoader
from models.data.reference import (
    composition_factor,
    fit_reference_energies,
    fit_reference_energies_from_factors,
    reference_sum,
    reference_sums,
)
from models.data.store import GraphStore, open_split
from models.demo import run as run_demo
from models.preprocess import run as run_preprocess

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Demo EMT metals in two files plus outliers and a duplicate; GFN2 molecules in one file."""
    d = tmp_path_factory.mktemp("raw")
    emt = Path(
        run_demo({"dataset": "demo-emt", "output": "emt.extxyz", "seed": 5, "count": 24}, d / "c.json")[
            "output"
        ]
    )
    gfn = Path(
        run_demo({"dataset": "demo-gfn2", "output": "g.extxyz", "seed": 5, "count": 8}, d / "c.json")[
            "output"
        ]
    )
    good = ase.io.read(emt, ":")
    bad = good[4].copy()
    bad.calc = SinglePointCalculator(bad, energy=0.0, forces=np.full((len(bad), 3), 80.0))
    nan = good[5].copy()
    nan.calc = SinglePointCalculator(nan, energy=float("nan"), forces=np.zeros((len(nan), 3)))
    extra = d / "extra.extxyz"
    ase.io.write(extra, [good[0], bad, nan, good[7]], format="extxyz")  # two duplicates, two outliers
    return {"demo-emt": [emt, extra], "demo-gfn2": [gfn]}


def _config(raw: dict[str, list[Path]], out: Path, **extra: object) -> dict[str, object]:
    return {
        "output_dir": str(out),
        "datasets": [{"name": n, "inputs": [str(p) for p in ps]} for n, ps in raw.items()],
        "cutoff": 4.5, "max_neighbours": 16, "split": {"train": 0.6, "val": 0.2, "test": 0.2}, "seed": 2,
        **extra,
    }  # fmt: skip


def _sharded(raw: dict[str, list[Path]], root: Path, n: int) -> dict[str, object]:
    parts = []
    for k in range(n):
        out = root / "parts" / f"{k:05d}-of-{n:05d}"
        res = run_preprocess(_config(raw, out, part={"index": k, "count": n}), root / f"part{k}.json")
        assert res["config"]["part"] == {"index": k, "count": n}
        parts.append(str(out))
    return run_preprocess({"output_dir": str(root), "parts": parts}, root / "merge.json")


@pytest.fixture(scope="module")
def both(
    raw: dict[str, list[Path]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict, dict, Path, Path]:
    single_root = tmp_path_factory.mktemp("single")
    single = run_preprocess(_config(raw, single_root), single_root / "cfg.json")
    sharded_root = tmp_path_factory.mktemp("sharded")
    merged = _sharded(raw, sharded_root, 3)
    return single, merged, single_root, sharded_root


def _by_sid(store: GraphStore) -> dict[int, dict[str, np.ndarray]]:
    out = {}
    for i in range(len(store)):
        g = store.gather([i])
        out[int(g["sid"][0])] = g
    return out


def test_sharded_summary_equals_single_task(both: tuple[dict, dict, Path, Path]) -> None:
    single, merged, _, _ = both
    assert merged["skipped"] is False and len(merged["parts"]) == 3
    for name, s in single["datasets"].items():
        m = merged["datasets"][name]
        for key in ("read", "kept", "counts", "filtered", "elements", "atoms", "edges", "with_forces",
                    "with_stress", "head_id"):  # fmt: skip
            assert m[key] == s[key], (name, key)
        assert m["reference_energies"].keys() == s["reference_energies"].keys()
        for z, e in s["reference_energies"].items():
            assert m["reference_energies"][z] == pytest.approx(e, abs=1e-6)
        for stat in ("energy", "energy_per_atom_after_reference"):
            for k, v in s[stat].items():
                assert m[stat][k] == pytest.approx(v, rel=1e-9, abs=1e-6)
    emt = merged["datasets"]["demo-emt"]
    assert emt["filtered"]["duplicate"] == 2 and emt["filtered"]["max_force"] == 1
    assert emt["filtered"]["nonfinite"] == 1
    # lineage: inputs once, every output file (indexes and part shards) with its sha256
    assert sorted(f["path"] for f in merged["input_files"]) == sorted(
        f["path"] for f in single["input_files"]
    )
    out_dir = Path(merged["output_dir"])
    paths = [f["path"] for f in merged["output_files"]]
    assert "demo-emt/train/index.json" in paths and any(p.startswith("parts/00002-of-00003/") for p in paths)
    assert all((out_dir / f["path"]).stat().st_size == f["bytes"] for f in merged["output_files"])


def test_sharded_store_reads_as_one_with_same_graphs(both: tuple[dict, dict, Path, Path]) -> None:
    _, _, single_root, sharded_root = both
    for name in ("demo-emt", "demo-gfn2"):
        for split in SPLITS:
            a = open_split(single_root, name, split, dtype=torch.float64)
            b = open_split(sharded_root, name, split, dtype=torch.float64)
            assert len(a) == len(b)
            assert b.attrs["parts"] == 3 and b.attrs["eref_from_index"] is True
            ga, gb = _by_sid(a), _by_sid(b)
            assert ga.keys() == gb.keys()
            for sid, x in ga.items():
                y = gb[sid]
                for key in (
                    "z",
                    "pos",
                    "forces",
                    "edge_index",
                    "shift",
                    "cell",
                    "energy",
                    "stress",
                    "natoms",
                ):
                    np.testing.assert_array_equal(x[key], y[key], err_msg=f"{name}/{split}/{sid}/{key}")
                np.testing.assert_allclose(x["eref"], y["eref"], atol=1e-6)
                assert np.isfinite(y["eref"]).all()


def test_merged_store_crosses_part_boundaries(both: tuple[dict, dict, Path, Path]) -> None:
    _, _, _, root = both
    index = json.loads((root / "demo-emt" / "train" / "index.json").read_text())
    assert len({e["part"] for e in index["shards"]}) == 3
    firsts = [e["first_graph"] for e in index["shards"]]
    assert firsts == sorted(firsts) and firsts[0] == 0
    assert all(len(h) == 64 for e in index["shards"] for h in e["sha256"].values())
    cached = open_split(root, "demo-emt", "train", dtype=torch.float64)
    lazy = open_split(root, "demo-emt", "train", dtype=torch.float64, cache=False)
    n = len(cached)
    chunk = cached.get_chunk(0, n)  # one chunk over all three parts
    assert int(chunk.num_graphs) == n
    idx = np.array([n - 1, 0, n // 2, 1])
    for key in ("pos", "energy", "eref", "edge_index"):
        assert torch.equal(cached.get_batch(idx)[key], lazy.get_batch(idx)[key])
    lazy.retain(np.arange(1, n, 2))  # a share across the parts: held graphs from memory, others from the files
    for key in ("pos", "energy", "eref", "edge_index", "natoms"):
        assert torch.equal(cached.get_batch(idx)[key], lazy.get_batch(idx)[key])
    assert np.array_equal(lazy.natoms, cached.natoms)
    # per-rank sharding over global indices: two ranks together see every graph once
    seen = []
    for rank in range(2):
        loader = MultiDatasetLoader([cached], batch_size=4, shuffle=False, rank=rank, world_size=2)
        seen += [int(s) for b in loader for s in b.sid]
    assert len(seen) == 2 * ((n + 1) // 2)  # DistributedSampler-style padding
    assert set(seen) == {int(s) for s in cached.graph_values("sid")}


def test_a_part_alone_refuses_and_merge_rerun_is_skipped(
    both: tuple[dict, dict, Path, Path], raw: dict[str, list[Path]]
) -> None:
    _, merged, _, root = both
    with pytest.raises(BadInput, match="one part of a sharded preprocessing run"):
        GraphStore(root / "parts" / "00000-of-00003" / "demo-emt" / "train")
    parts = [str(root / "parts" / f"{k:05d}-of-00003") for k in range(3)]
    again = run_preprocess({"output_dir": str(root), "parts": parts}, root / "merge.json")
    assert again["skipped"] is True and again["content_hash"] == merged["content_hash"]
    with pytest.raises(BadInput, match=r"expected parts 0 … 1 of 2"):
        run_preprocess({"output_dir": str(root / "m2"), "parts": parts[:2]}, root / "merge.json")
    with pytest.raises(BadInput, match="does not exist"):
        run_preprocess({"output_dir": str(root / "m3"), "parts": [str(root / "nope")]}, root / "merge.json")
    with pytest.raises(BadInput, match="field 'part'"):
        run_preprocess(_config(raw, root / "bad", part={"index": 3, "count": 3}), root / "bad.json")
    assert not (root / "m2").exists() or not any((root / "m2").iterdir())


def test_two_parts_agree_with_three(both: tuple[dict, dict, Path, Path], raw, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, merged3, _, _ = both
    merged2 = _sharded(raw, tmp_path, 2)
    for name, d in merged3["datasets"].items():
        assert merged2["datasets"][name]["counts"] == d["counts"]
        for z, e in d["reference_energies"].items():
            assert merged2["datasets"][name]["reference_energies"][z] == pytest.approx(e, abs=1e-6)


def test_reference_factors_reproduce_one_fit() -> None:
    rng = np.random.default_rng(0)
    true = {1: -13.6, 6: -1030.0, 8: -2040.0, 29: -48000.0}
    zs = [rng.choice(list(true), size=int(rng.integers(2, 9))) for _ in range(120)]
    energy = np.array([sum(true[int(x)] for x in z) + rng.normal(0, 0.05) for z in zs])
    one = fit_reference_energies(zs, energy)
    factors = [composition_factor(zs[k::4], energy[k::4]) for k in range(4)] + [composition_factor([], [])]
    many = fit_reference_energies_from_factors(factors)
    assert one.keys() == many.keys()
    for z in one:
        assert many[z] == pytest.approx(one[z], abs=1e-8)
    natoms = np.array([len(z) for z in zs])
    sums = reference_sums(np.concatenate(zs), natoms, one)
    assert sums.tolist() == [reference_sum(z, one) for z in zs]  # bit-identical, atom order
    # a part holding elements no other part has still gets its references
    only_cu = composition_factor([np.array([29, 29])], np.array([-96000.0]))
    only_h = composition_factor([np.array([1])], np.array([-13.6]))
    refs = fit_reference_energies_from_factors([only_cu, only_h])
    assert refs[29] == pytest.approx(-48000.0, rel=1e-6) and refs[1] == pytest.approx(-13.6, rel=1e-6)
