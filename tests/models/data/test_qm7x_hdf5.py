"""The QM7-X reader on a file in the publisher's HDF5 layout (tests/models/data/qm7x_layout.py cites it): every
geometry of every molecule in eV and Å, the energy field chosen explicitly, the xz-compressed file as published
refused with the command that makes it readable, malformed geometries named, and the registry entry that
routes it through preprocessing."""

from __future__ import annotations

import lzma
from pathlib import Path

import h5py
import numpy as np
import pytest

from models.appio import BadInput
from models.data.readers import read_structures
from models.formats import file_problem
from models.registry import load_registry
from tests.models.data.qm7x_layout import write_qm7x


def test_geometries_read_in_ev_and_angstrom(tmp_path: Path) -> None:
    path = tmp_path / "1000.hdf5"
    truth = {t["origin"]: t for t in write_qm7x(path)}
    info = load_registry().get("qm7x")
    assert info.reader == "qm7x-hdf5" and info.units["energy"] == "eV" and file_problem(path, "qm7x-hdf5") is None
    got = list(read_structures("qm7x-hdf5", path, units=info.units))
    assert sorted(s.origin.split(":", 1)[1] for s in got) == sorted(truth)
    for s in got:
        t = truth[s.origin.split(":", 1)[1]]
        assert s.z.tolist() == t["numbers"] and s.charge == 0 and not s.pbc.any()
        assert s.energy == pytest.approx(t["energy"], abs=1e-12)
        np.testing.assert_allclose(s.pos, t["pos"], atol=1e-12)
        np.testing.assert_allclose(s.forces, t["forces"], atol=1e-12)
    atomisation = {s.origin.split(":", 1)[1]: s.energy for s in read_structures("qm7x-hdf5", path, energy="eAT")}
    assert atomisation == pytest.approx({k: t["atomisation"] for k, t in truth.items()})


def test_the_published_xz_file_is_refused_with_the_command(tmp_path: Path) -> None:
    plain = tmp_path / "1000.hdf5"
    write_qm7x(plain)
    packed = tmp_path / "1000.xz"
    packed.write_bytes(lzma.compress(plain.read_bytes()))
    problem = file_problem(packed, "qm7x-hdf5")
    assert problem is not None and f"xz -dk {packed}" in problem
    with pytest.raises(BadInput, match=r"1000.xz: xz-compressed, as QM7-X is published"):
        list(read_structures("qm7x-hdf5", packed))
    unpacked = tmp_path / "unpacked.hdf5"
    unpacked.write_bytes(lzma.decompress(packed.read_bytes()))  # what `xz -dk` writes
    assert len(list(read_structures("qm7x-hdf5", unpacked))) == 5


def test_malformed_geometries_are_named(tmp_path: Path) -> None:
    path = tmp_path / "qm7x.hdf5"
    write_qm7x(path)
    with h5py.File(path, "a") as h5:
        g = h5["23"]["Geom-m23-i1-c2-opt"]
        del g["totFOR"]
        g.create_dataset("totFOR", data=np.zeros((2, 3)))
    with pytest.raises(BadInput, match=r"qm7x.hdf5:23/Geom-m23-i1-c2-opt: field 'totFOR' has shape \(2, 3\)"):
        list(read_structures("qm7x-hdf5", path))
    with pytest.raises(BadInput, match=r"field 'eXYZ' is missing"):
        list(read_structures("qm7x-hdf5", path, energy="eXYZ"))
    with h5py.File(tmp_path / "other.hdf5", "w") as h5:
        h5.create_dataset("x", data=[1])
    with pytest.raises(BadInput, match="no QM7-X geometries"):
        list(read_structures("qm7x-hdf5", tmp_path / "other.hdf5"))
