"""Conversion of an ``ase.Atoms`` (with a calculator, ``info`` or ``arrays`` labels) to a :class:`Structure`.

Shared by the ASE-file and ASE-LMDB readers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress

from models.appio import BadInput
from models.data.structure import Structure
from models.data.units import energy_factor, force_factor, length_factor, stress_factor

DEFAULT_UNITS = {"energy": "eV", "forces": "eV/Å", "length": "Å", "stress": "eV/Å^3"}


def _lookup(atoms: Atoms, key: str) -> Any:
    """Find ``key`` in ``atoms.info``, its nested ``data`` dict (ASE-db rows) or ``atoms.arrays``."""
    if key in atoms.info:
        return atoms.info[key]
    data = atoms.info.get("data")
    if isinstance(data, Mapping) and key in data:
        return data[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    return None


def _calc_result(atoms: Atoms, name: str) -> Any:
    calc = atoms.calc
    if calc is None:
        return None
    results = getattr(calc, "results", {})
    return results.get(name)


def _scalar_int(value: Any, origin: str, name: str) -> int:
    """``int(value)`` of a scalar label (0 when absent or not a scalar)."""
    if value is None or np.ndim(value) != 0:
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadInput(f"{origin}: field {name!r} is not a number: {str(value)[:40]!r}") from None


def atoms_to_structure(
    atoms: Atoms,
    origin: str,
    *,
    units: Mapping[str, str] | None = None,
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
    require_energy: bool = True,
) -> Structure:
    """Convert one ``Atoms`` to a :class:`Structure`, converting units.

    Labels are taken from ``energy_key``/``forces_key``/``stress_key`` when given (looked up in ``info``, the
    ``info['data']`` of a database row, then ``arrays``), otherwise from the attached calculator's results,
    otherwise from ``info['energy']`` / ``arrays['forces']`` / ``info['stress']``.

    Args:
        atoms: The structure.
        origin: ``"<file>:<record>"`` used in error messages.
        units: Source units (registry ``units``); eV/Å units when ``None``.
        require_energy: Raise when no energy is found (else return ``energy=None``).

    Raises:
        BadInput: Non-finite positions or cell, a missing energy, or a forces array of the wrong shape.
    """
    energy = _lookup(atoms, energy_key) if energy_key else None
    if energy is None:
        energy = _calc_result(atoms, "energy")
    if energy is None and not energy_key:
        energy = _lookup(atoms, "energy")

    forces = _lookup(atoms, forces_key) if forces_key else None
    if forces is None:
        forces = _calc_result(atoms, "forces")
    if forces is None and not forces_key:
        forces = atoms.arrays.get("forces")

    stress = _lookup(atoms, stress_key) if stress_key else None
    if stress is None:
        stress = _calc_result(atoms, "stress")
    if stress is None and not stress_key:
        stress = atoms.info.get("stress")

    charge = _lookup(atoms, "charge")
    spin = _lookup(atoms, "spin")
    return labelled_structure(
        atoms.numbers,
        atoms.get_positions(),
        atoms.get_cell().array,
        atoms.get_pbc(),
        origin,
        energy=energy,
        forces=forces,
        stress=stress,
        charge=_scalar_int(charge, origin, "charge"),
        spin=_scalar_int(spin, origin, "spin"),
        units=units,
        require_energy=require_energy,
        energy_source=energy_key or "calculator energy / info[energy]",
    )


def labelled_structure(
    numbers: Any,
    positions: Any,
    cell: Any,
    pbc: Any,
    origin: str,
    *,
    energy: Any,
    forces: Any = None,
    stress: Any = None,
    charge: int = 0,
    spin: int = 0,
    units: Mapping[str, str] | None = None,
    require_energy: bool = True,
    energy_source: str = "energy",
) -> Structure:
    """A :class:`Structure` from labels as a file holds them: the one place units are converted and checked.

    Args:
        numbers: [N] atomic numbers.
        positions: [N, 3] positions in ``units['length']``.
        cell: [3, 3] lattice vectors as rows in ``units['length']`` (zeros for a molecule).
        pbc: [3] periodic directions.
        origin: ``"<file>:<record>"`` used in error messages.
        energy: Total energy in ``units['energy']`` (a scalar or a one-element array), or ``None``.
        forces: [N, 3] forces in ``units['forces']``, or ``None``.
        stress: Stress in ``units['stress']`` as Voigt [6] (xx, yy, zz, yz, xz, xy), [9] or [3, 3], or ``None``.
        charge: Total charge, e.
        spin: Spin multiplicity (2S+1); 0 when unknown.
        units: Source units (registry ``units``); eV/Å units when ``None``.
        require_energy: Raise when ``energy`` is ``None`` (else return ``energy=None``).
        energy_source: Where the energy was looked for (named in the missing-energy message).

    Raises:
        BadInput: No atoms, non-finite positions or cell, a missing energy, or a forces / stress array of the
            wrong shape.
    """
    u = {**DEFAULT_UNITS, **(units or {})}
    z = np.asarray(numbers, dtype=np.int64)
    n = int(z.shape[0])
    if n == 0:
        raise BadInput(f"{origin}: structure has no atoms")
    lf = length_factor(u["length"])
    pos = np.asarray(positions, dtype=np.float64) * lf
    if not np.isfinite(pos).all():
        raise BadInput(f"{origin}: field 'positions' holds NaN/Inf")
    cell = np.asarray(cell, dtype=np.float64) * lf
    if not np.isfinite(cell).all():
        raise BadInput(f"{origin}: field 'cell' holds NaN/Inf")
    if energy is None:
        if require_energy:
            raise BadInput(f"{origin}: no energy (looked for {energy_source})")
    else:
        value = energy if isinstance(energy, float) else float(np.asarray(energy, dtype=np.float64).reshape(-1)[0])
        energy = value * energy_factor(u["energy"])
    if forces is not None:
        forces = np.asarray(forces, dtype=np.float64)
        if forces.shape != (n, 3):
            raise BadInput(f"{origin}: field 'forces' has shape {forces.shape}, expected ({n}, 3)")
        forces = forces * force_factor(u["forces"])
    if stress is not None:
        stress = np.asarray(stress, dtype=np.float64)
        if stress.shape == (6,):
            stress = voigt_6_to_full_3x3_stress(stress)
        elif stress.shape == (9,):
            stress = stress.reshape(3, 3)
        if stress.shape != (3, 3):
            raise BadInput(f"{origin}: field 'stress' has shape {stress.shape}, expected (6,) or (3, 3)")
        stress = stress * stress_factor(u["stress"])
    return Structure(
        z=z,
        pos=pos,
        cell=cell,
        pbc=np.asarray(pbc, dtype=bool),
        energy=energy,
        forces=forces,
        stress=stress,
        charge=charge,
        spin=spin,
        origin=origin,
    )
