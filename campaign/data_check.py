"""``campaign data check NAME PATH…``: is a downloaded dataset what the registry says, before a long preprocess?

Checked, in order (the first failing check of a file is its problem; every file is checked):

* the registry has a reader for the dataset (else the registry's notes say why, and nothing is read);
* each file exists, is not empty and starts like its reader's format (:func:`models.formats.file_problem`);
* the reader reads it: up to ``sample`` structures per file (all of them with ``sample=None``), streamed;
* the labels are plausible in the units the registry declares: finite, energies per atom between
  -100,000 and +1,000 eV (a Hartree file read as eV, or a per-atom field read as a total, lands outside), force
  components below :data:`MAX_FORCE` eV/Å (a Hartree/Bohr file read as eV/Å is 51x too large);
* the lengths are plausible in the units the registry declares: over the molecules that hold hydrogen, the
  median of each one's shortest H–X distance lies in [:data:`MIN_XH`, :data:`MAX_XH`] Å (X–H bonds are 0.74-1.5 Å;
  positions in Bohr read as Å put them near 2 Å);
* when every structure was read, the count is within a factor :data:`COUNT_FACTOR` of the registry's
  published size (a partial download or the wrong file).

The summary gives the structures read, atoms, elements, the energy-per-atom and force ranges, and where the
dataset is published.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Force components above this (eV/Å) mean the units are wrong.
MAX_FORCE = 1000.0
#: Energy per atom outside [MIN_E, MAX_E] eV means the units (or the field) are wrong.
MIN_E, MAX_E = -1.0e5, 1.0e3
#: The median shortest H–X distance of the molecules read (Å) must lie in [MIN_XH, MAX_XH].
MIN_XH, MAX_XH = 0.6, 1.6
#: A complete file set must hold between 1/COUNT_FACTOR and COUNT_FACTOR times the registry's size.
COUNT_FACTOR = 10.0


@dataclass
class DataCheck:
    """What ``campaign data check`` found: problems (``file: problem``) and the summary of what was read."""

    dataset: str
    reader: str | None
    files: list[str]
    problems: list[str] = field(default_factory=list)
    structures: int = 0
    complete: bool = True  # every structure of every file was read (no sample limit hit)
    atoms: int = 0
    elements: set[int] = field(default_factory=set)
    energy_per_atom: tuple[float, float] | None = None  # (min, max) eV/atom
    max_force: float | None = None  # eV/Å
    median_xh: float | None = None  # Å: median over the molecules with hydrogen of their shortest H–X distance
    with_forces: int = 0
    with_stress: int = 0
    published: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems


def shortest_xh(z: np.ndarray, pos: np.ndarray) -> float | None:
    """The shortest distance (Å) between a hydrogen atom and any other atom of a molecule, or None without one.

    Args:
        z: [N] atomic numbers.  pos: [N, 3] positions, Å.
    """
    h = np.flatnonzero(z == 1)
    if h.size == 0 or z.size < 2 or z.size > 2000:  # O(N·H) pairs: molecules only
        return None
    d = np.linalg.norm(pos[h, None, :] - pos[None, :, :], axis=-1)
    d[np.arange(h.size), h] = np.inf
    return float(d.min())


def check_dataset(name: str, paths: list[Path], *, sample: int | None = 1000,
                  reader: str | None = None, reader_options: dict[str, Any] | None = None) -> DataCheck:
    """Check ``paths`` as the files of registry dataset ``name`` (see the module docstring).

    Args:
        name: Registry name.
        paths: The downloaded files.
        sample: Structures read per file at most (None: all).
        reader: Reader override (as a recipe's ``reader:``); its options are then not the registry's.
        reader_options: Options of the reader (as a recipe's ``reader_options:``), over the registry's.

    Raises:
        KeyError: ``name`` is not in the registry (the message lists the known names).
    """
    from models.appio import BadInput
    from models.data.readers import read_structures
    from models.formats import READER_NAMES, file_problem
    from models.registry import load_registry

    info = load_registry().get(name)
    chosen = reader or info.reader
    out = DataCheck(dataset=name, reader=chosen, files=[str(p) for p in paths],
                    published={"url": info.url, "n_structures": info.n_structures, "elements": info.elements,
                               "source_format": info.source_format, "level_of_theory": info.level_of_theory,
                               "notes": info.notes})
    if chosen is None:
        out.problems.append(f"{name}: no reader for its published format ({info.source_format}): {info.notes}")
        return out
    if chosen not in READER_NAMES:
        out.problems.append(f"{name}: unknown reader {chosen!r} (readers: {', '.join(READER_NAMES)})")
        return out
    options = {**(dict(info.reader_options) if chosen == info.reader else {}), **(reader_options or {})}
    e_lo, e_hi, f_max = math.inf, -math.inf, 0.0
    xh: list[float] = []
    for path in paths:
        why = file_problem(path, chosen)
        if why is not None:
            out.problems.append(f"{path}: {why} (reader {chosen})")
            continue
        problem = None
        n = 0
        try:
            records = read_structures(chosen, path, units=info.units, **options)
            limited = records if sample is None else itertools.islice(records, sample + 1)
            for s in limited:
                if sample is not None and n == sample:
                    out.complete = False
                    break
                n += 1
                out.atoms += s.natoms
                out.elements.update(int(z) for z in s.z)
                if s.energy is not None:
                    epa = s.energy / max(1, s.natoms)
                    if not math.isfinite(epa) or not MIN_E <= epa <= MAX_E:
                        problem = (f"{s.origin}: energy per atom {epa:.6g} eV is implausible (the registry says "
                                   f"{info.units.get('energy')}); wrong units or field?")
                        break
                    e_lo, e_hi = min(e_lo, epa), max(e_hi, epa)
                if s.forces is not None:
                    fm = float(abs(s.forces).max()) if s.forces.size else 0.0
                    if not math.isfinite(fm) or fm > MAX_FORCE:
                        problem = (f"{s.origin}: a force component of {fm:.6g} eV/Å is implausible (the registry "
                                   f"says {info.units.get('forces')}); wrong units?")
                        break
                    f_max = max(f_max, fm)
                    out.with_forces += 1
                out.with_stress += int(s.stress is not None)
                d = shortest_xh(s.z, s.pos) if not s.pbc.any() else None
                if d is not None:
                    xh.append(d)
        except BadInput as exc:  # names the file and the record
            problem = str(exc)
        except Exception as exc:  # any other failure of a reader on this file is reported, not raised
            problem = f"{path}: unreadable ({type(exc).__name__}: {exc})"
        out.structures += n
        if problem is not None:
            out.problems.append(problem)
        elif n == 0:
            out.problems.append(f"{path}: no structures read (reader {chosen})")
    if e_lo <= e_hi:
        out.energy_per_atom = (e_lo, e_hi)
    out.max_force = f_max if out.with_forces else None
    if xh:
        out.median_xh = float(np.median(xh))
        if not MIN_XH <= out.median_xh <= MAX_XH:
            out.problems.append(
                f"{name}: the molecules' shortest H–X distances have a median of {out.median_xh:.3g} Å, X–H bonds "
                f"are 0.74-1.5 Å: the positions are not in {info.units.get('length', 'Å')} as the registry says "
                f"(Bohr read as Å gives ~2 Å)")
    expected = info.n_structures or (info.generator or {}).get("default_count")
    if out.complete and not out.problems and expected and out.structures:
        if not expected / COUNT_FACTOR <= out.structures <= expected * COUNT_FACTOR:
            out.problems.append(f"{name}: {out.structures:,} structures in all, the registry says about "
                                f"{int(expected):,} (published at {info.url or 'see the registry'}): a partial "
                                "download or the wrong files?")
    return out
