"""The QCML reader on record files in the publishers' TFDS layout (tests/models/data/qcml_layout.py cites it):
every conformation in eV and Å with its charge and multiplicity, the energy field chosen explicitly, flagged
outliers skipped unless kept, corrupt or hostile records refused before they are parsed (file, record, byte), and
the registry entry that routes the shards through `campaign data check` and preprocessing."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.units import Bohr

from models.appio import BadInput
from models.data.readers import read_structures
from models.data.readers.qcml_tfds import MAX_RECORD_BYTES, masked_crc32c
from models.formats import file_problem
from models.registry import load_registry
from tests.models.data.qcml_layout import write_qcml


def _key(s) -> str:
    return s.origin.split("key_hash ")[1].rstrip(")")


def test_conformations_read_in_ev_and_angstrom(tmp_path: Path) -> None:
    shards, truth = write_qcml(tmp_path)
    info = load_registry().get("qcml")
    assert info.reader == "qcml-tfds" and info.units["energy"] == "Hartree" and info.units["length"] == "Å"
    assert all(file_problem(p, "qcml-tfds") is None for p in shards)
    by_key = {t["key_hash"]: t for t in truth}
    got = [s for p in shards for s in read_structures("qcml-tfds", p, units=info.units, **info.reader_options)]
    assert [_key(s) for s in got] == [t["key_hash"] for t in truth if not t["outlier"]]  # file order
    for s in got:
        t = by_key[_key(s)]
        assert s.origin.startswith(f"{tmp_path}/qcml/dft_force_field/1.0.0/{t['shard']}:{t['record']} ")
        assert s.z.tolist() == t["numbers"] and not s.pbc.any()
        assert (s.charge, s.spin) == (t["charge"], t["multiplicity"])
        assert s.energy == pytest.approx(t["formation"], rel=1e-12)  # the default: formation energy, eV
        np.testing.assert_allclose(s.pos, t["pos"], rtol=1e-12)
        np.testing.assert_allclose(s.forces, t["forces"], rtol=1e-12)
    totals = {_key(s): s.energy for p in shards
              for s in read_structures("qcml-tfds", p, units=info.units, energy="total", outliers="keep")}
    assert totals == pytest.approx({t["key_hash"]: t["total"] for t in truth}, rel=1e-12)  # the outlier too
    with pytest.raises(BadInput, match="option energy: 'corrected' is not one of formation, total"):
        list(read_structures("qcml-tfds", shards[0], energy="corrected"))


def _frame(data: bytes) -> bytes:
    head = struct.pack("<Q", len(data))
    return head + struct.pack("<I", masked_crc32c(head)) + data + struct.pack("<I", masked_crc32c(data))


def test_corrupt_and_hostile_records_are_refused_before_parsing(tmp_path: Path) -> None:
    shards, _ = write_qcml(tmp_path)
    raw = shards[0].read_bytes()
    first_len = struct.unpack_from("<Q", raw)[0]
    second = 12 + first_len + 4

    flipped = tmp_path / "flipped"
    flipped.write_bytes(raw[:second + 20] + bytes([raw[second + 20] ^ 0xFF]) + raw[second + 21:])
    with pytest.raises(BadInput, match=rf"flipped: record 1 \(byte {second}\): the data's checksum does not match"):
        list(read_structures("qcml-tfds", flipped))

    truncated = tmp_path / "truncated"
    truncated.write_bytes(raw[:-7])
    with pytest.raises(BadInput, match=r"truncated: record 2 \(byte \d+\): truncated"):
        list(read_structures("qcml-tfds", truncated))

    huge = tmp_path / "huge"  # a well-formed header asking for a terabyte
    head = struct.pack("<Q", 1 << 40)
    huge.write_bytes(head + struct.pack("<I", masked_crc32c(head)) + b"\0" * 64)
    with pytest.raises(BadInput, match=rf"huge: record 0 \(byte 0\): 1,099,511,627,776 bytes, more than the "
                                       rf"{MAX_RECORD_BYTES:,}"):
        list(read_structures("qcml-tfds", huge))

    html = tmp_path / "error.html"
    html.write_text("<html>403 Forbidden</html>")
    assert "not a TFRecord file" in (file_problem(html, "qcml-tfds") or "")
    with pytest.raises(BadInput, match=r"error.html: record 0 .*length's checksum does not match"):
        list(read_structures("qcml-tfds", html))

    from tfrecord import example_pb2

    ex = example_pb2.Example()
    ex.features.feature["atomic_numbers"].int64_list.value.extend([6, 1])
    ex.features.feature["positions"].float_list.value.extend([0.0] * 5)  # 5 values for 2 atoms
    ex.features.feature["pbe0_formation_energy"].float_list.value.append(-1.0)
    bad = tmp_path / "bad-shape"
    bad.write_bytes(_frame(ex.SerializeToString()))
    with pytest.raises(BadInput, match="bad-shape:0: feature 'positions' has 5 values, expected 6"):
        list(read_structures("qcml-tfds", bad))
    del ex.features.feature["pbe0_formation_energy"]
    ex.features.feature["positions"].float_list.value.append(0.0)
    bad.write_bytes(_frame(ex.SerializeToString()))
    with pytest.raises(BadInput, match="bad-shape:0: feature 'pbe0_formation_energy' is missing"):
        list(read_structures("qcml-tfds", bad))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(BadInput, match="empty: no records"):
        list(read_structures("qcml-tfds", empty))


def _campaign(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "campaign.cli.app", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "200"}, timeout=300)


def test_data_check_and_preprocess_read_the_shards(tmp_path: Path) -> None:
    from models.contracts.preprocess import PreprocessSummary
    from models.data.store import open_split
    from models.preprocess import run

    shards, truth = write_qcml(tmp_path)
    res = _campaign("data", "check", "qcml", *map(str, shards), cwd=tmp_path)
    # labels and lengths plausible; five structures are a partial download of 33.5 million
    assert res.returncode == 2, res.stdout + res.stderr
    import re

    xh = float(re.search(r"median shortest H–X distance \(Å\)\W+([0-9.]+)", res.stdout).group(1))
    assert 0.9 < xh < 1.2
    problems = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(problems) == 1 and "5 structures in all, the registry says about 33,500,000" in problems[0]

    cfg = {"datasets": [{"name": "qcml", "inputs": [str(p) for p in shards]}], "output_dir": str(tmp_path / "out"),
           "cutoff": 5.0, "split": {"train": 1.0, "val": 0.0, "test": 0.0}, "seed": 0}
    summary = PreprocessSummary.model_validate(run(cfg, tmp_path / "pre.json")).datasets["qcml"]
    kept = [t for t in truth if not t["outlier"]]
    assert summary.read == summary.kept == len(kept) == 5 and summary.counts["train"] == 5
    batch = open_split(tmp_path / "out", "qcml", "train").get_batch(list(range(5)))
    assert sorted(batch.charge.tolist()) == sorted(t["charge"] for t in kept)
    assert sorted(batch.spin.tolist()) == sorted(t["multiplicity"] for t in kept)


def test_positions_in_another_unit_than_the_registry_says_fail_the_check(tmp_path: Path) -> None:
    from campaign.data_check import check_dataset

    shards, _ = write_qcml(tmp_path, length_unit=Bohr)  # a release that stored Bohr, read as the registry's Å
    res = check_dataset("qcml", shards)
    assert res.median_xh is not None and 1.8 < res.median_xh < 2.2
    assert any("shortest H–X distances have a median of 1.89 Å" in p and "not in Å as the registry says" in p
               for p in res.problems), res.problems
