"""Streaming extended-XYZ reader: ASE's meaning of every frame, without building an ``ase.Atoms`` per frame.

Extended XYZ (the MPtrj / Alexandria re-exports, most fine-tuning sets) is read by ``ase.io.iread`` at about
175 µs a frame for a 10-atom molecule, most of it in building ``Atoms``, a ``SinglePointCalculator`` and the
comment line's character-by-character parse; on a 10⁶-structure set that is more than half of preprocessing.
This reader splits the file into frames itself and converts the frames written the way ASE and the common
exporters write them (``key=value`` pairs, quoted values, ``Properties`` columns of type R/I/S/L) directly to a
:class:`Structure`, with ASE's semantics: ``Lattice`` in the ASE order (rows are lattice vectors), ``pbc``
``T T T`` when a ``Lattice`` is given without ``pbc``, ``stress`` as a 3x3 in Fortran order reduced to Voigt
and back, symbols capitalised, a ``Z`` column preferred over ``species``, every column converted (a bad
number fails the frame as it does in ASE).

Every frame outside that grammar (bare words, escapes, ``_JSON`` values, ``virial`` and the other calculator
properties, ``VEC`` cell lines, numbers like ``nan`` or ``1_0``, a row with a different number of columns…)
is handed to ``ase.io.read`` on its own text: ASE stays the reference, and the test suite compares the two
frame by frame. Two deliberate differences from ``ase.io.iread``: a blank line followed by more frames is an
error naming the line (ASE stops reading there and drops the rest silently), and the file is never indexed up
front (ASE keeps the offset of every frame before yielding the first).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain, islice
from pathlib import Path
from typing import IO, Any

import numpy as np
from ase.data import atomic_numbers

from models.appio import BadInput
from models.data.readers.atoms import atoms_to_structure, labelled_structure
from models.data.structure import Structure

#: Suffixes of the names ``read_extxyz`` reads (after a compression suffix, if any).
EXTXYZ_SUFFIXES = (".xyz", ".extxyz")
#: Most atoms one frame may announce (bounds what a corrupt or hostile count line makes the reader hold).
MAX_ATOMS = 10_000_000

_OPENERS: dict[str, Any] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}

# One ``key=value`` pair in the subset read here: a plain key; a double-quoted value without quotes or
# backslashes, or a bare value without quotes, brackets, backslashes or '='.
_PAIR = r'([A-Za-z_][A-Za-z0-9_\-]*)=(?:"([^"\\]*)"|([^\s"\'{}\[\]\\=]+))'
_PAIR_RE = re.compile(_PAIR)
_COMMENT_RE = re.compile(rf"\s*(?:{_PAIR}(?:\s+|\Z))*")  # pairs apart: ASE glues `a="x"b=1` into one value
# Numbers whose int / float reading is the same in Python and in NumPy (what ASE's info parser uses).
_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INT_RE = re.compile(r"[+-]?\d+")
_BOOL = {"T": True, "F": False, "true": True, "false": False, "True": True, "False": False, "TRUE": True,
         "FALSE": False}  # fmt: skip
#: Comment keys that ASE treats specially and this reader leaves to ASE: calculator results other than
#: energy and stress, and the other 3x3 key.
_ASE_ONLY_KEYS = frozenset({"free_energy", "dipole", "magmom", "polarization", "dielectric_tensor", "virial"})
#: Column names ASE turns into calculator results (other than forces): left to ASE.
_ASE_ONLY_COLUMNS = frozenset({"stress", "stresses", "energy", "energies", "charge", "charges", "magmoms",
                               "magmom", "dipole", "born_effective_charges", "free_energy", "polarization",
                               "dielectric_tensor"})  # fmt: skip
_DEFAULT_PROPERTIES = "species:S:1:pos:R:3"


class _OutsideSubset(Exception):
    """This frame is left to ASE."""


@dataclass(frozen=True)
class _Columns:
    """Where the columns of a ``Properties`` string are.

    Attributes:
        ncols: Values per atom line.
        numbers: Column of ``Z`` (preferred) or ``None``.
        species: Column of ``species`` or ``None``.
        reals: Every R column, in order.
        ints: Every I column other than ``Z``.
        pos: Indices into ``reals`` of x, y, z.
        forces: Indices into ``reals`` of the forces, or ``None``.
    """

    ncols: int
    numbers: int | None
    species: int | None
    reals: tuple[int, ...]
    ints: tuple[int, ...]
    pos: tuple[int, int, int]
    forces: tuple[int, int, int] | None


@lru_cache(maxsize=256)
def _columns(properties: str) -> _Columns | None:
    """The layout of ``properties`` (e.g. ``species:S:1:pos:R:3:forces:R:3``), or ``None`` outside the subset."""
    fields = properties.split(":")
    if len(fields) % 3 or not fields[0]:
        return None
    col = 0
    seen: set[str] = set()
    numbers = species = None
    reals: list[int] = []
    ints: list[int] = []
    where: dict[str, tuple[str, int, int]] = {}
    for name, kind, width in zip(fields[::3], fields[1::3], fields[2::3], strict=True):
        if not width.isdigit() or int(width) < 1 or kind not in "RISL" or len(kind) != 1 or name in seen:
            return None
        if name in _ASE_ONLY_COLUMNS:
            return None
        seen.add(name)
        n = int(width)
        where[name] = (kind, n, col)
        if kind == "R":
            reals.extend(range(col, col + n))
        elif kind == "I" and name != "Z":
            ints.extend(range(col, col + n))
        col += n
    if where.get("pos", ("", 0, 0))[:2] != ("R", 3):
        return None
    if "Z" in where:
        if where["Z"][:2] != ("I", 1):
            return None
        numbers = where["Z"][2]
    if "species" in where:
        if where["species"][:2] != ("S", 1):
            return None
        species = where["species"][2]
    if numbers is None and species is None:
        return None
    forces = None
    if "forces" in where:
        if where["forces"][:2] != ("R", 3):
            return None
        f0 = reals.index(where["forces"][2])
        forces = (f0, f0 + 1, f0 + 2)
    p0 = reals.index(where["pos"][2])
    return _Columns(col, numbers, species, tuple(reals), tuple(ints), (p0, p0 + 1, p0 + 2), forces)


def _numbers(value: str, count: int | None = None) -> list[float]:
    """The numbers of a value (separated by spaces or commas, as ASE splits them)."""
    tokens = value.replace(",", " ").split()
    if not tokens or (count is not None and len(tokens) != count):
        raise _OutsideSubset
    for t in tokens:
        if not _NUMBER_RE.fullmatch(t):
            raise _OutsideSubset
    return [float(t) for t in tokens]


def _integer(value: str) -> int:
    """A scalar read as ASE's ``int(info[key])`` reads it (``1.7`` -> 1)."""
    if _INT_RE.fullmatch(value):
        return int(value)
    return int(_numbers(value, 1)[0])


def _symbol_number(symbol: str) -> int:
    return atomic_numbers[symbol.capitalize()]


def parse_frame(comment: str, atom_lines: list[str], origin: str,
                units: Mapping[str, str] | None) -> Structure | None:  # fmt: skip
    """One frame as :func:`ase.io.read` + :func:`atoms_to_structure` would give it, or ``None`` when the frame is
    outside the subset read here (the caller then hands it to ASE).

    Args:
        comment: The frame's second line.
        atom_lines: Its atom lines (as many as its first line announces).
        origin: ``"<file>:record <k>"`` for error messages.
        units: Source units (registry ``units``).

    Raises:
        BadInput: What :func:`labelled_structure` refuses (no energy, NaN positions, …).
    """
    if not _COMMENT_RE.fullmatch(comment):
        return None
    info: dict[str, str] = {}
    for key, quoted, bare in _PAIR_RE.findall(comment):
        value = bare or quoted
        if not value.strip() or value.startswith("_JSON") or key in _ASE_ONLY_KEYS:
            return None
        info[key] = value
    layout = _columns(info.get("Properties", _DEFAULT_PROPERTIES))
    if layout is None:
        return None
    try:
        pbc: list[bool] = [False, False, False]
        cell = np.zeros((3, 3))
        if "Lattice" in info:
            cell = np.array(_numbers(info["Lattice"], 9)).reshape(3, 3)
            pbc = [True, True, True]
        if "pbc" in info:
            flags = [_BOOL[t] for t in info["pbc"].replace(",", " ").split()]
            if len(flags) not in (1, 3):
                return None
            pbc = flags * 3 if len(flags) == 1 else flags
        energy = None
        if "energy" in info:
            energy = float(info["energy"]) if _NUMBER_RE.fullmatch(info["energy"]) else _numbers(info["energy"], 1)[0]
        stress = None
        if "stress" in info:
            m = np.array(_numbers(info["stress"], 9)).reshape((3, 3), order="F")
            stress = m[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]  # ASE's Voigt order of the Fortran-order 3x3
        charge = _integer(info["charge"]) if "charge" in info else 0
        spin = _integer(info["spin"]) if "spin" in info else 0
        rows = [line.split() for line in atom_lines]
        ncols = layout.ncols
        for row in rows:
            if len(row) != ncols:
                return None
        columns = list(zip(*rows, strict=True))
        if layout.numbers is not None:
            numbers = [int(t) for t in columns[layout.numbers]]
        else:
            numbers = [_symbol_number(t) for t in columns[layout.species]]  # type: ignore[index]
        for c in layout.ints:
            for t in columns[c]:
                int(t)
        reals = np.array([float(t) for t in chain.from_iterable(columns[c] for c in layout.reals)])
        reals = reals.reshape(len(layout.reals), len(rows))
    except (_OutsideSubset, KeyError, ValueError):
        return None
    forces = reals[list(layout.forces)].T if layout.forces is not None else None
    return labelled_structure(numbers, reals[list(layout.pos)].T, cell, pbc, origin, energy=energy,
                              forces=forces, stress=stress, charge=charge, spin=spin, units=units,
                              energy_source="calculator energy / info[energy]")  # fmt: skip


def _read_with_ase(text: str, origin: str, units: Mapping[str, str] | None) -> Structure:
    """One frame's text read by ASE (the reference for frames outside the fast subset)."""
    import ase.io

    try:
        atoms = ase.io.read(io.StringIO(text), index=0, format="extxyz")
    except Exception as exc:
        raise BadInput(f"{origin}: cannot read ({type(exc).__name__}: {exc})") from exc
    assert not isinstance(atoms, list)  # index=0: one frame
    return atoms_to_structure(atoms, origin, units=units)


def _open_text(path: Path) -> IO[str]:
    opener = _OPENERS.get(path.suffix)
    if opener is not None:
        stream: IO[str] = opener(path, "rt", encoding="utf-8")
        return stream
    return path.open(encoding="utf-8")


def is_extxyz_name(path: Path) -> bool:
    """Whether ``path`` is named like an (extended) XYZ file, compressed or not."""
    name = path.name[: -len(path.suffix)] if path.suffix in _OPENERS else path.name
    return name.endswith(EXTXYZ_SUFFIXES)


def read_extxyz(path: str | Path, *, units: Mapping[str, str] | None = None) -> Iterator[Structure]:
    """Yield every frame of an extended-XYZ file (plain, ``.gz``, ``.bz2`` or ``.xz``), one at a time.

    Args:
        path: The file.
        units: Source units (registry ``units``); labels are converted to eV, eV/Å, Å, eV/Å^3.

    Raises:
        BadInput: Naming the file and the line or record: an empty file, a count line that is not a number, a
            frame cut short, a frame after a blank line, undecodable text, or a frame ASE cannot read or that has no energy.
    """
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path}: no such file")
    try:
        with _open_text(path) as fh:
            yield from _frames(path, iter(fh), units)
    except (UnicodeDecodeError, OSError, EOFError, lzma.LZMAError) as exc:
        raise BadInput(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc


def _frames(path: Path, lines: Iterator[str], units: Mapping[str, str] | None) -> Iterator[Structure]:
    lineno = 1  # of ``header``
    header = next(lines, None)
    record = 0
    if header is None or not header.strip():
        raise BadInput(f"{path}: empty file: no extended-XYZ frame at its start")
    while header is not None:
        if not header.strip():
            for line in lines:
                lineno += 1
                if line.strip():
                    raise BadInput(f"{path}: line {lineno}: a frame follows a blank line (record {record} would be"
                                   " the first one after it; ASE stops reading at the blank line)")  # fmt: skip
            return
        try:
            natoms = int(header)
        except ValueError:
            raise BadInput(f"{path}: line {lineno}: expected the atom count of record {record}, got "
                           f"{header.strip()[:80]!r}") from None  # fmt: skip
        origin = f"{path}:record {record}"
        if not 0 < natoms <= MAX_ATOMS:
            raise BadInput(f"{origin} (line {lineno}): atom count {natoms} is not in [1, {MAX_ATOMS}]")
        comment = next(lines, None)
        atom_lines = list(islice(lines, natoms))
        if comment is None or len(atom_lines) < natoms:
            raise BadInput(f"{origin} (line {lineno}): cut short: {natoms} atoms announced, "
                           f"{len(atom_lines)} atom lines before the end of the file")  # fmt: skip
        following = next(lines, None)
        cell_lines = []
        while following is not None and following.lstrip().startswith("VEC"):
            cell_lines.append(following)
            following = next(lines, None)
        structure = None if cell_lines else parse_frame(comment, atom_lines, origin, units)
        if structure is None:
            structure = _read_with_ase("".join([header, comment, *atom_lines, *cell_lines]), origin, units)
        yield structure
        lineno += 2 + natoms + len(cell_lines)
        record += 1
        header = following
