"""The streaming extended-XYZ reader against ASE, frame by frame (ASE is the reference for what a frame means)."""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.singlepoint import SinglePointCalculator

from models.appio import BadInput
from models.data.readers import get_reader
from models.data.readers.atoms import atoms_to_structure
from models.data.readers.extxyz import parse_frame, read_extxyz
from models.data.structure import Structure

UNITS = {"energy": "Hartree", "forces": "Hartree/Bohr", "length": "Bohr", "stress": "GPa"}

#: Frames of the subset read without ASE: (comment, atom lines).
FAST_FRAMES = [
    ('Properties=species:S:1:pos:R:3:forces:R:3 energy=-14.25 pbc="F F F"',
     ["C 0.0 0.0 0.0 0.1 -0.2 0.3", "H 0.63 0.63 0.63 -0.1 0.2 -0.3"]),
    ('Lattice="3.6 0.0 0.0 0.0 3.6 0.0 0.0 0.0 3.6" Properties=species:S:1:pos:R:3:forces:R:3 energy=-3 '
     'stress="0.1 0.01 0.02 0.04 0.2 0.03 0.05 0.06 0.3" charge=1 spin=2',
     ["Cu 0 0 0 0 0 0", "cu 1.8 1.8 0 1e-3 -2E-3 0", "CU 1.8 0 1.8 0 0 0", "Cu 0 1.8 1.8 0 0 0"]),
    ('Lattice="5.0,0.1,0.0,0.0,5.0,0.0,0.0,0.0,20.0" pbc="T T F" Properties=Z:I:1:species:S:1:pos:R:3 '
     'energy=1.5e+01 config_type=slab mp_id="mp-30 (Cu)" uid=abc',
     ["29 Xx 0.0 0.0 10.0", "8 O 1.0 1.0 11.5"]),
    ('energy=-76.4 Properties="species:S:1:pos:R:3:tags:I:1:fixed:L:1:label:S:1:vel:R:3" charge=-1.7 pbc=F',
     ["O 0 0 0.1 3 T oxygen 0.5 0.5 0.5", "H 0.76 0.58 -0.4 0 F h1 0 0 0", "H -0.76 0.58 -0.4 0 maybe h2 1 1 1"]),
    ('Properties=species:S:1:pos:R:3 energy=.5 Lattice="2 0 0 0 2 0 0 0 2" pbc=T',
     ["Si 0 0 0"]),
    ('Properties=species:S:1:pos:R:3:forces:R:3 energy=-1.0 note="a = b, c"',
     ["H 0.0 0.0 0.0 nan 0 0", "H 0.0 0.0 0.74 1_0 0 0"]),  # per-atom reals are read by float(), as ASE does
]

#: Frames left to ASE: outside the subset (what ASE makes of them is what the reader must give).
ASE_FRAMES = [
    ('Properties=species:S:1:pos:R:3 energy=-1.0 virial="1 0 0 0 1 0 0 0 1"', ["H 0 0 0", "H 0 0 0.74"]),
    ('Properties=species:S:1:pos:R:3 energy=-1.0 free_energy=-1.1', ["H 0 0 0", "H 0 0 0.74"]),
    ('Properties=species:S:1:pos:R:3 energy=-1.0 relaxed', ["H 0 0 0", "H 0 0 0.74"]),
    ('Properties=species:S:1:pos:R:3 energy=nan', ["H 0 0 0", "H 0 0 0.74"]),
    ('Properties=species:S:1:pos:R:3 energy=-1.0 Lattice={4 0 0 0 4 0 0 0 4}', ["H 0 0 0", "H 0 0 0.74"]),
    ('Properties=species:S:1:pos:R:3 energy=-1.0 pbc="1 0 1" Lattice="4 0 0 0 4 0 0 0 4"', ["H 0 0 0", "H 0 0 1"]),
    ('Properties=species:S:1:pos:R:3 energy=-1.0 info="_JSON {\\"a\\": [1, 2]}"', ["H 0 0 0", "H 0 0 0.74"]),
    ('Properties=species:S:1:pos:R:3:charge:R:1 energy=-1.0', ["H 0 0 0 0.5", "H 0 0 0.74 -0.5"]),
    ('Properties=species:S:1:pos:R:3 energy=-1.0', ["H 0 0 0 extra", "H 0 0 0.74"]),
    ('Properties=species:S:1:pos:R:3 energy = -2.0', ["H 0 0 0", "H 0 0 0.74"]),
    ('Properties=species:S:1:pos:R:3 energy="-1.0 -2.0"', ["H 0 0 0", "H 0 0 0.74"]),
    ('Properties=species:S:1:pos:R:3 energy=-1.0 charge=T', ["H 0 0 0", "H 0 0 0.74"]),
    ('Properties=species:S:1:pos:R:3 energy=-1.0 note="x"energy=-3.0', ["H 0 0 0", "H 0 0 0.74"]),
]


def _write(path: Path, frames: list[tuple[str, list[str]]]) -> None:
    path.write_text("".join(f"{len(lines)}\n{c}\n" + "".join(f"{ln}\n" for ln in lines) for c, lines in frames))


def _ase_reference(path: Path, units: dict[str, str] | None) -> list[Structure]:
    """What ASE's reader makes of the file, through the same label lookup."""
    return [atoms_to_structure(a, f"{path}:record {k}", units=units)
            for k, a in enumerate(ase.io.iread(str(path), index=":", format="extxyz"))]  # fmt: skip


def _assert_same(a: Structure, b: Structure) -> None:
    assert a.origin == b.origin
    for name in ("z", "pos", "cell", "pbc", "forces", "stress"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape, name
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), (name, x, y)
    assert a.energy == b.energy or (np.isnan(a.energy) and np.isnan(b.energy))  # type: ignore[arg-type]
    assert (a.charge, a.spin) == (b.charge, b.spin)


@pytest.mark.parametrize("units", [None, UNITS])
def test_every_frame_as_ase_reads_it(tmp_path: Path, units: dict[str, str] | None) -> None:
    path = tmp_path / "mixed.extxyz"
    frames = [f for pair in zip(FAST_FRAMES, ASE_FRAMES, strict=False) for f in pair]
    frames += FAST_FRAMES[len(ASE_FRAMES):] + ASE_FRAMES[len(FAST_FRAMES):]
    _write(path, frames)
    ours = list(read_extxyz(path, units=units))
    reference = _ase_reference(path, units)
    assert len(ours) == len(reference) == len(frames)
    for a, b in zip(ours, reference, strict=True):
        _assert_same(a, b)
    # the stress is ASE's: the Fortran-order 3x3 reduced to Voigt and made symmetric
    crystal = ours[2]
    assert crystal.stress is not None and np.allclose(crystal.stress, crystal.stress.T)
    assert crystal.pbc.tolist() == [True, True, True] and crystal.charge == 1 and crystal.spin == 2


def test_the_subset_is_read_without_ase_and_the_rest_with_it() -> None:
    for comment, lines in FAST_FRAMES:
        assert parse_frame(comment + "\n", [ln + "\n" for ln in lines], "f:record 0", None) is not None, comment
    for comment, lines in ASE_FRAMES:
        assert parse_frame(comment + "\n", [ln + "\n" for ln in lines], "f:record 0", None) is None, comment


def _labelled(atoms: Atoms, rng: np.random.Generator, stress: bool) -> Atoms:
    atoms = atoms.copy()
    atoms.info.pop("adsorbate_info", None)  # a dict: ASE's writer skips it with a warning
    atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
    results = {"energy": float(rng.normal(-3.0, 1.0)) * len(atoms), "forces": rng.normal(size=(len(atoms), 3))}
    if stress:
        results["stress"] = rng.normal(scale=0.01, size=6)
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def test_files_ase_writes_are_read_without_ase(tmp_path: Path) -> None:
    """What ``ase.io.write`` produces (the MPtrj / Alexandria re-exports are written this way) is in the subset."""
    rng = np.random.default_rng(7)
    images = [_labelled(molecule(name), rng, False) for name in ("CH4", "H2O", "C6H6", "CH3CH2OH")]
    images += [_labelled(bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1), rng, True),
               _labelled(fcc111("Pt", size=(2, 2, 3), vacuum=6.0), rng, True),
               _labelled(bulk("NaCl", "rocksalt", a=5.64), rng, True)]  # fmt: skip
    images[1].info.update({"config_type": "water", "charge": 0, "spin": 1})
    path = tmp_path / "written.extxyz"
    ase.io.write(str(path), images, format="extxyz")
    lines = path.read_text().splitlines(keepends=True)
    at = 0
    for k in range(len(images)):
        n = int(lines[at])
        assert parse_frame(lines[at + 1], lines[at + 2: at + 2 + n], f"{path}:record {k}", None) is not None
        at += n + 2
    for a, b in zip(read_extxyz(path), _ase_reference(path, None), strict=True):
        _assert_same(a, b)


@pytest.mark.parametrize("suffix,opener", [(".gz", gzip.open), (".bz2", bz2.open), (".xz", lzma.open)])
def test_compressed_files(tmp_path: Path, suffix: str, opener: Any) -> None:
    plain = tmp_path / "set.extxyz"
    _write(plain, FAST_FRAMES)
    packed = tmp_path / f"set.extxyz{suffix}"
    with opener(packed, "wb") as fh:
        fh.write(plain.read_bytes())
    for a, b in zip(read_extxyz(packed), read_extxyz(plain), strict=True):
        assert a.origin.endswith(b.origin.split(":")[-1])
        assert np.array_equal(a.pos, b.pos) and a.energy == b.energy


def test_the_ase_reader_streams_extxyz_through_it(tmp_path: Path) -> None:
    """``reader: ase`` on an extxyz file yields each frame before reading the next: a bad record later in a file
    does not stop the first ones from arriving (ASE indexes the whole file first)."""
    path = tmp_path / "set.xyz"
    _write(path, FAST_FRAMES[:2])
    with path.open("a") as fh:
        fh.write("3\nProperties=species:S:1:pos:R:3 energy=-1\nH 0 0 0\nH 0 0 1\n")  # cut short: 2 of 3 lines
    frames = get_reader("ase")(path)
    assert next(frames).natoms == 2 and next(frames).natoms == 4
    with pytest.raises(BadInput, match=r"set\.xyz:record 2 \(line 11\): cut short: 3 atoms announced, 2 atom lines"):
        next(frames)


@pytest.mark.parametrize("text,message", [
    ("2\nenergy=-1\nH 0 0 0\nH 0 0 1\n\n2\nenergy=-1\nH 0 0 0\nH 0 0 1\n",
     r"line 6: a frame follows a blank line \(record 1"),
    ("2\nenergy=-1\nH 0 0 0\nH 0 0 1\ntwo\n", r"line 5: expected the atom count of record 1, got 'two'"),
    ("0\nenergy=-1\n", r"record 0 \(line 1\): atom count 0 is not in"),
    ("", r"empty file"),
    ("\n\n", r"empty file"),
    ("2\nenergy=-1\nH 0 0 0\nH 0 zero 1\n", r"record 0: cannot read \(ValueError"),
    ("2\nProperties=species:S:1:pos:R:3 pbc=F\nH 0 0 0\nH 0 0 1\n", r"record 0: no energy"),
    ("2\nenergy=-1\nH 0 0 0\nQq 0 0 1\n", r"record 0: cannot read"),
    ("1\nenergy=-1\nH nan 0 0\n", r"record 0: field 'positions' holds NaN"),
    ("1\nenergy=-1 spin=\"2\"charge=1\nH 0 0 0\n", r"record 0: field 'spin' is not a number: '2charge=1'"),
])  # fmt: skip
def test_bad_files_name_the_file_and_the_line_or_record(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.extxyz"
    path.write_text(text)
    with pytest.raises(BadInput, match=message) as err:
        list(read_extxyz(path))
    assert str(path) in str(err.value)


def test_trailing_blank_lines_end_the_file(tmp_path: Path) -> None:
    path = tmp_path / "set.extxyz"
    _write(path, FAST_FRAMES[:1])
    with path.open("a") as fh:
        fh.write("\n   \n\n")
    assert len(list(read_extxyz(path))) == 1
