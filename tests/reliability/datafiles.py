"""Small corrupted data files, generated at test time: extxyz, ANI-layout HDF5, ASE databases, ADIOS2 stores.

Every builder takes a directory and returns the path it wrote. Good structures are labelled by ASE's EMT
calculator (real physics, milliseconds per structure)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator


def emt_frames(n: int = 4, seed: int = 0) -> list[Atoms]:
    """``n`` rattled 4-atom Cu cells labelled by EMT."""
    out = []
    for k in range(n):
        a = bulk("Cu", "fcc", a=3.6, cubic=True)
        a.rattle(0.05, seed=seed + k)
        a.calc = EMT()
        e, f = a.get_potential_energy(), a.get_forces()
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        out.append(a)
    return out


def write_extxyz(path: Path, frames: list[Atoms]) -> Path:
    """Write ``frames`` as extended XYZ."""
    import ase.io

    ase.io.write(str(path), frames, format="extxyz")
    return path


def good_extxyz(d: Path, name: str = "good.extxyz") -> Path:
    """Four labelled structures."""
    return write_extxyz(d / name, emt_frames())


def extxyz_without_energies(d: Path) -> Path:
    frames = emt_frames(2)
    for a in frames:
        a.calc = None
    return write_extxyz(d / "noenergy.extxyz", frames)


def extxyz_nan_positions(d: Path) -> Path:
    p = good_extxyz(d, "nanpos.extxyz")
    lines = p.read_text().splitlines()
    fields = lines[2].split()
    fields[1] = "nan"  # x of the first atom of record 0
    lines[2] = " ".join(fields)
    p.write_text("\n".join(lines) + "\n")
    return p


def extxyz_truncated(d: Path) -> Path:
    p = good_extxyz(d, "truncated.extxyz")
    text = p.read_text()
    p.write_text(text[: int(len(text) * 0.6)])
    return p


def extxyz_garbled_count(d: Path) -> Path:
    p = good_extxyz(d, "garbled.extxyz")
    lines = p.read_text().splitlines()
    lines[0] = "four"
    p.write_text("\n".join(lines) + "\n")
    return p


def extxyz_empty(d: Path) -> Path:
    p = d / "empty.extxyz"
    p.write_text("")
    return p


def extxyz_overlapping_atoms(d: Path) -> Path:
    frames = emt_frames(3)
    for a in frames:
        pos = a.get_positions()
        pos[1] = pos[0] + 0.01  # two atoms 0.01 Å apart
        a.set_positions(pos)
    return write_extxyz(d / "overlap.extxyz", frames)


def extxyz_nan_energy(d: Path) -> Path:
    frames = emt_frames(2)
    for a in frames:
        a.calc = SinglePointCalculator(a, energy=float("nan"), forces=a.calc.results["forces"])
    return write_extxyz(d / "nanenergy.extxyz", frames)


# ------------------------------------------------------------------------------------------------------ HDF5
def _ani(path: Path, *, coords: str = "coordinates", energy: str | None = "wb97x_dz.energy",
         nan_pos: bool = False, bad_shape: bool = False, with_z: bool = True) -> Path:
    import h5py

    rng = np.random.default_rng(0)
    pos = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])[None] + rng.normal(0, 0.02, (3, 3, 3))
    if nan_pos:
        pos[1, 2, 0] = np.nan
    with h5py.File(path, "w") as h5:
        g = h5.create_group("H2O")
        if with_z:
            g["atomic_numbers"] = np.array([8, 1, 1])
        else:
            g["species"] = np.array([8, 1, 1])
        g[coords] = pos[:, :2] if bad_shape else pos
        if energy:
            g[energy] = np.array([-76.4, -76.41, -76.39])
    return path


def hdf5_good(d: Path) -> Path:
    return _ani(d / "good.h5")


def hdf5_missing_coordinates(d: Path) -> Path:
    return _ani(d / "nocoords.h5", coords="xyz")


def hdf5_missing_energy(d: Path) -> Path:
    return _ani(d / "noenergy.h5", energy="ccsd(t)_cbs.energy")


def hdf5_missing_atomic_numbers(d: Path) -> Path:
    return _ani(d / "noz.h5", with_z=False)


def hdf5_nan_coordinates(d: Path) -> Path:
    return _ani(d / "nanpos.h5", nan_pos=True)


def hdf5_bad_shape(d: Path) -> Path:
    return _ani(d / "shape.h5", bad_shape=True)


def hdf5_truncated(d: Path) -> Path:
    p = _ani(d / "truncated.h5")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    return p


def hdf5_not_hdf5(d: Path) -> Path:
    p = d / "text.h5"
    p.write_text("this is not an HDF5 file\n")
    return p


# ------------------------------------------------------------------------------------------------- ASE dbs
def asedb_garbage(d: Path) -> Path:
    p = d / "garbage.db"
    p.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 4)
    return p


def aselmdb_garbage(d: Path) -> Path:
    p = d / "garbage.aselmdb"
    p.write_bytes(b"\x00\x01not lmdb" * 100)
    return p
