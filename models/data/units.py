"""Conversion of source-file units to the project's units (eV, Å, eV/Å, eV/Å^3).

Factors use CODATA 2018 values (the ones ASE uses in ``ase.units``).
"""

from __future__ import annotations

from ase import units as _u

HARTREE_EV = float(_u.Hartree)  # 27.211386... eV
BOHR_ANGSTROM = float(_u.Bohr)  # 0.529177... Å
KCAL_MOL_EV = float(_u.kcal / _u.mol)

_ENERGY = {"eV": 1.0, "Hartree": HARTREE_EV, "Ha": HARTREE_EV, "kcal/mol": KCAL_MOL_EV, "meV": 1e-3}
_LENGTH = {"Å": 1.0, "Angstrom": 1.0, "Bohr": BOHR_ANGSTROM}
_STRESS = {"eV/Å^3": 1.0, "GPa": float(_u.GPa), "kbar": 0.1 * float(_u.GPa), "kBar": 0.1 * float(_u.GPa)}


def energy_factor(unit: str) -> float:
    """Multiply an energy in ``unit`` by this to get eV.

    Raises:
        KeyError: Unknown unit (lists the known ones).
    """
    try:
        return _ENERGY[unit]
    except KeyError:
        raise KeyError(f"unknown energy unit {unit!r}; known: {sorted(_ENERGY)}") from None


def length_factor(unit: str) -> float:
    """Multiply a length in ``unit`` by this to get Å."""
    try:
        return _LENGTH[unit]
    except KeyError:
        raise KeyError(f"unknown length unit {unit!r}; known: {sorted(_LENGTH)}") from None


def force_factor(unit: str) -> float:
    """Multiply a force in ``unit`` (``"<energy>/<length>"``, e.g. ``"Hartree/Bohr"``) by this to get eV/Å."""
    energy, _, length = unit.partition("/")
    if not length:
        raise KeyError(f"force unit {unit!r} must read '<energy>/<length>'")
    return energy_factor(energy) / length_factor(length)


def stress_factor(unit: str) -> float:
    """Multiply a stress in ``unit`` by this to get eV/Å^3."""
    try:
        return _STRESS[unit]
    except KeyError:
        raise KeyError(f"unknown stress unit {unit!r}; known: {sorted(_STRESS)}") from None
