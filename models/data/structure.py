"""The record every reader yields: one labelled structure in eV / Å units (see :mod:`models.keys`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Structure:
    """One atomistic structure with its labels, already converted to eV, eV/Å, Å, eV/Å^3.

    Attributes:
        z: [N] int64 atomic numbers.
        pos: [N, 3] float64 Cartesian positions, Å.
        cell: [3, 3] float64 lattice vectors as rows, Å (zeros for molecules).
        pbc: [3] bool periodic directions.
        energy: Total energy, eV; ``None`` when this record carries no label at the requested level.
        forces: [N, 3] float64 forces, eV/Å, or ``None``.
        stress: [3, 3] float64 stress, eV/Å^3 (ASE sign convention), or ``None``.
        charge: Total charge, e.
        spin: Spin multiplicity (2S+1); 0 when unknown.
        origin: Where it came from, ``"<file>:<record>"`` (for error messages and provenance).
    """

    z: np.ndarray
    pos: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: float | None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    charge: int = 0
    spin: int = 0
    origin: str = ""

    @property
    def natoms(self) -> int:
        """Number of atoms."""
        return int(self.z.shape[0])
