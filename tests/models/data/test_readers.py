import ase.db
import ase.io
import h5py
import numpy as np
import pytest
from ase.units import Hartree

from models.appio import BadInput
from models.data.readers import read_structures
from models.registry import load_registry


def test_extxyz_roundtrip(tmp_path, emt_structures):
    path = tmp_path / "mptrj.extxyz"
    ase.io.write(path, emt_structures, format="extxyz")
    got = list(read_structures("ase", path, units=load_registry().get("mptrj").units))
    assert len(got) == len(emt_structures)
    for s, a in zip(got, emt_structures, strict=True):
        assert s.energy == pytest.approx(a.get_potential_energy())
        np.testing.assert_allclose(s.forces, a.get_forces(), atol=1e-8)
        np.testing.assert_allclose(s.pos, a.positions, atol=1e-8)
        assert (s.stress is not None) == bool(a.pbc.all())
        assert s.pbc.tolist() == a.pbc.tolist()


def test_ase_sqlite_db_with_hartree_units_and_charge(tmp_path, water):
    path = tmp_path / "nabla.db"
    with ase.db.connect(path) as db:
        db.write(water, data={"energy": np.array([-76.4]), "forces": np.full((3, 3), 0.01)}, charge=0)
    got = list(
        read_structures(
            "ase",
            path,
            units=load_registry().get("nabla2dft").units,
            energy_key="energy",
            forces_key="forces",
        )
    )
    assert got[0].energy == pytest.approx(-76.4 * Hartree)
    np.testing.assert_allclose(got[0].forces, 0.01 * Hartree / 0.529177210903, rtol=1e-6)


def test_missing_energy_names_the_record(tmp_path, water):
    path = tmp_path / "x.extxyz"
    ase.io.write(path, [water], format="extxyz")
    with pytest.raises(BadInput, match=r"x\.extxyz:record 0: no energy"):
        list(read_structures("ase", path))


def test_nan_positions_rejected(tmp_path, emt_structures):
    path = tmp_path / "nan.extxyz"
    a = emt_structures[0].copy()
    a.calc = emt_structures[0].calc
    a.positions[1, 0] = np.nan
    ase.io.write(path, [emt_structures[1], a], format="extxyz")
    with pytest.raises(BadInput, match=r"nan\.extxyz:record 1: field 'positions'"):
        list(read_structures("ase", path))


def _ani_file(path, pos_key="coordinates", nested=False):
    with h5py.File(path, "w") as f:
        root = f.create_group("data") if nested else f
        g = root.create_group("C1H4") if not nested else root.create_group("C1H4/rxn0")
        g["atomic_numbers"] = np.array([6, 1, 1, 1, 1])
        rng = np.random.default_rng(0)
        g[pos_key] = rng.normal(size=(3, 5, 3))
        g["wb97x_dz.energy"] = np.array([-40.1, -40.2, -40.3])
        g["wb97x_dz.forces"] = np.full((3, 5, 3), 0.02)
        g["ccsd(t)_cbs.energy"] = np.array([-40.5, np.nan, -40.7])


def test_ani_bad_inputs(tmp_path):
    path = tmp_path / "bad.h5"
    _ani_file(path)
    with pytest.raises(BadInput, match="no energies"):
        list(read_structures("ani-hdf5", path, method="b3lyp"))
    with h5py.File(path, "a") as f:
        del f["C1H4/coordinates"]
    with pytest.raises(BadInput, match=r"bad\.h5:/C1H4: missing field 'coordinates'"):
        list(read_structures("ani-hdf5", path, method="wb97x_dz"))
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(BadInput, match=r"junk\.h5"):
        list(read_structures("ani-hdf5", tmp_path / "junk.h5", method="wb97x_dz"))


def test_ase_lmdb_layout(tmp_path, emt_structures, water):
    pytest.importorskip("ase_db_backends")
    path = tmp_path / "omol.aselmdb"
    db = ase.db.connect(str(path), type="aselmdb")
    for a in emt_structures[:3]:
        db.write(a)
    w = water.copy()
    w.info.update({"charge": -1, "spin": 2})
    w.calc = None
    db.write(w, data={"energy": -12.5, "forces": np.zeros((3, 3)), "charge": -1, "spin": 2})
    db.close()
    got = list(read_structures("ase-lmdb", path, energy_key="energy", forces_key="forces"))
    assert len(got) == 4
    assert got[0].energy == pytest.approx(emt_structures[0].get_potential_energy())
    assert got[3].charge == -1 and got[3].spin == 2 and got[3].energy == -12.5
