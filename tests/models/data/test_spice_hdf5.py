"""The SPICE reader on a file in the publisher's HDF5 layout (tests/models/data/spice_layout.py cites it):
hartree/bohr to eV/Å, the gradient's sign, the charge from the mapped SMILES, malformed groups named, and the
registry entry that routes it."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from models.appio import BadInput
from models.data.readers import read_structures
from models.data.readers.spice_hdf5 import smiles_charge
from models.formats import sniff
from models.registry import load_registry
from tests.models.data.spice_layout import write_spice


def test_conformations_read_in_ev_and_angstrom(tmp_path: Path) -> None:
    path = tmp_path / "SPICE-2.0.1.hdf5"
    truth = write_spice(path)
    info = load_registry().get("spice2")
    assert info.reader == "spice-hdf5" and info.units["energy"] == "Hartree" and sniff(path, "spice-hdf5") is None
    got = list(read_structures("spice-hdf5", path, units=info.units))
    by_origin = {t["origin"]: t for t in truth}  # HDF5 lists groups by name
    assert sorted(s.origin.split(":", 1)[1] for s in got) == sorted(by_origin)
    for s in got:
        t = by_origin[s.origin.split(":", 1)[1]]
        assert s.z.tolist() == t["numbers"] and s.charge == t["charge"] and not s.pbc.any()
        assert s.energy == pytest.approx(t["energy"], abs=1e-9)
        np.testing.assert_allclose(s.pos, t["pos"], atol=1e-5)  # float32 bohr in the file
        np.testing.assert_allclose(s.forces, t["forces"], atol=1e-5)  # minus the float32 gradient


def test_charges_from_mapped_smiles() -> None:
    assert smiles_charge("[O:1]([H:2])[H:3]") == 0
    assert smiles_charge("[N+:1]([H:2])([H:3])([H:4])[H:5]") == 1
    assert smiles_charge("[Ca+2:1].[Cl-:2].[Cl-:3]") == 0
    assert smiles_charge("[O-:1][S:2](=[O:3])(=[O:4])[O-:5]") == -2


def test_malformed_groups_are_named(tmp_path: Path) -> None:
    path = tmp_path / "spice.hdf5"
    write_spice(path)
    with h5py.File(path, "a") as h5:
        del h5["water"]["dft_total_gradient"]
        h5["water"].create_dataset("dft_total_gradient", data=np.zeros((3, 2, 3), dtype=np.float32))
    with pytest.raises(BadInput, match=r"spice.hdf5:water: field 'dft_total_gradient' has shape \(3, 2, 3\)"):
        list(read_structures("spice-hdf5", path))
    (tmp_path / "empty.hdf5").write_bytes(b"")
    assert sniff(tmp_path / "empty.hdf5", "spice-hdf5") == "the file is empty"
    with h5py.File(tmp_path / "other.hdf5", "w") as h5:
        h5.create_dataset("x", data=[1])
    with pytest.raises(BadInput, match="no SPICE molecule groups"):
        list(read_structures("spice-hdf5", tmp_path / "other.hdf5"))
