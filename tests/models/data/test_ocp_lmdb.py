"""The Open Catalyst LMDB reader on a file in the publisher's layout (tests/models/data/ocp_lmdb_layout.py cites
it): every record in eV, eV/Å and Å without PyG's classes, what ``y`` is said explicitly, PyG 2 records too, and
a record that would run code when unpickled refused without running it."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from models.appio import BadInput
from models.data.readers import read_structures
from models.formats import file_problem
from tests.models.data.ocp_lmdb_layout import pyg1_record, write_ocp_lmdb


def test_records_read_in_ev_and_angstrom(tmp_path: Path) -> None:
    path = tmp_path / "data.0000.lmdb"
    truth = write_ocp_lmdb(path)
    assert file_problem(path, "ocp-lmdb") is None
    got = list(read_structures("ocp-lmdb", path, energy="total"))
    assert [s.origin.rsplit(":", 1)[1] for s in got] == [t["key"] for t in truth]
    for s, t in zip(got, truth, strict=True):
        assert s.z.tolist() == t["numbers"] and s.pbc.all()
        assert s.energy == pytest.approx(t["energy"], abs=1e-12)
        np.testing.assert_array_equal(s.pos, t["pos"])  # float32 in the file
        np.testing.assert_array_equal(s.cell, t["cell"])
        np.testing.assert_array_equal(s.forces, t["forces"])
    with pytest.raises(BadInput, match="option 'energy' must say what the file's y is"):
        list(read_structures("ocp-lmdb", path, energy="corrected"))


def test_records_written_by_pyg2_read_the_same(tmp_path: Path) -> None:
    path = tmp_path / "pyg2.lmdb"
    data = Data(pos=torch.zeros(2, 3), cell=torch.eye(3).view(1, 3, 3) * 5.0,
                atomic_numbers=torch.tensor([29.0, 8.0]), y=-1.25, force=torch.ones(2, 3), natoms=2)
    env = lmdb.open(str(path), subdir=False, map_size=1 << 22)
    with env.begin(write=True) as txn:
        txn.put(b"0", pickle.dumps(data, protocol=-1))
    env.close()
    (s,) = read_structures("ocp-lmdb", path, energy="adsorption")
    assert s.z.tolist() == [29, 8] and s.energy == -1.25 and s.forces.sum() == 6.0


class _Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch pwned",))


class _MemoryBomb:
    """Twelve bytes of pickle that would ask torch for 80 GB."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (torch.Tensor, (10_000_000_000,))


class _NestedPayload:
    """A 'tensor storage' whose bytes are a torch.save of the payload: torch's own loader would run it."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        buf = io.BytesIO()
        torch.save(_Payload(), buf)
        return (torch.storage._load_from_bytes, (buf.getvalue(),))


def test_a_record_that_would_run_code_is_refused_unrun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.lmdb"
    good = pyg1_record({"pos": torch.zeros(1, 3), "cell": torch.eye(3).view(1, 3, 3),
                        "atomic_numbers": torch.tensor([1.0]), "y": 0.0})
    env = lmdb.open(str(path), subdir=False, map_size=1 << 22)
    with env.begin(write=True) as txn:
        txn.put(b"0", good)
        txn.put(b"1", pickle.dumps(_Payload()))
    env.close()
    records = read_structures("ocp-lmdb", path, energy="total")
    assert next(records).z.tolist() == [1]
    with pytest.raises(BadInput, match=r"evil.lmdb:1: not an OCP graph record \(refusing to load posix.system"):
        next(records)
    nested = tmp_path / "nested.lmdb"
    env = lmdb.open(str(nested), subdir=False, map_size=1 << 22)
    with env.begin(write=True) as txn:
        txn.put(b"0", pickle.dumps(_NestedPayload()))
    env.close()
    with pytest.raises(BadInput, match=r"nested.lmdb:0: not an OCP graph record \(Weights only load failed"):
        list(read_structures("ocp-lmdb", nested, energy="total"))
    bomb = tmp_path / "bomb.lmdb"
    env = lmdb.open(str(bomb), subdir=False, map_size=1 << 22)
    with env.begin(write=True) as txn:
        txn.put(b"0", pickle.dumps(_MemoryBomb()))
    env.close()
    with pytest.raises(BadInput, match=r"bomb.lmdb:0: not an OCP graph record \(refusing to load torch.Tensor"):
        list(read_structures("ocp-lmdb", bomb, energy="total"))
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "text.lmdb").write_text("not an lmdb" * 10)
    assert file_problem(tmp_path / "text.lmdb", "ocp-lmdb") == "not an LMDB file (no LMDB signature)"


def test_the_original_lmdbs_are_checked_and_declared_through_the_reader_override(tmp_path: Path) -> None:
    """``campaign data check oc22 FILE --reader ocp-lmdb --option energy=total`` and a recipe's
    ``reader_options`` reach the reader; without the option it says what to declare."""
    import os as _os
    import subprocess
    import sys

    from campaign.recipe import parse_recipe
    from tests.conftest import REPO

    path = tmp_path / "data.0000.lmdb"
    write_ocp_lmdb(path)
    env = {**_os.environ}
    base = [sys.executable, "-m", "campaign.cli.app", "data", "check", "oc22", str(path), "--reader", "ocp-lmdb"]
    with_option = subprocess.run([*base, "--option", "energy=total"], cwd=REPO, env=env, capture_output=True,
                                 text=True, timeout=120)
    assert "structures read" in with_option.stdout and "3" in with_option.stdout, with_option.stdout
    assert "registry says about 9,850,000" in with_option.stderr.replace("\n", " ")  # a 3-record file: too few
    without = subprocess.run(base, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert without.returncode == 2 and "option 'energy' must say what the file's y is" in without.stdout + \
        without.stderr.replace("\n", " ")
    recipe = parse_recipe(f"campaign: oc\ndatasets:\n  - {{name: oc22, files: [{path}], reader: ocp-lmdb, "
                          "reader_options: {energy: total}}\n")
    assert dict(recipe.datasets[0].reader_options) == {"energy": "total"}
