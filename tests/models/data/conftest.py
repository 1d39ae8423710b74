"""Small shared fixtures for the data-pipeline tests."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator


def labelled(atoms: Atoms, stress: bool = True) -> Atoms:
    """Label with EMT (real physics) and freeze the results in a SinglePointCalculator."""
    atoms.calc = EMT()
    res = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if stress and atoms.pbc.all():
        res["stress"] = atoms.get_stress()
    atoms.calc = SinglePointCalculator(atoms, **res)
    return atoms


@pytest.fixture(scope="session")
def emt_structures() -> list[Atoms]:
    """Twelve EMT-labelled structures: alloyed bulk cells, a slab, a cluster-like molecule of metal atoms."""
    out = []
    for k in range(10):
        a = bulk(["Cu", "Ni", "Pd", "Au"][k % 4], "fcc", cubic=True).repeat((1, 1, 2))
        a.rattle(0.05, seed=k)
        if k % 3 == 0:
            a.symbols[0] = "Ag"
        out.append(labelled(a))
    slab = fcc111("Pt", size=(2, 2, 2), vacuum=5.0)
    slab.pbc = (True, True, False)
    out.append(labelled(slab))
    cl = Atoms("Cu4", positions=np.array([[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5]], float))
    out.append(labelled(cl))
    return out


@pytest.fixture(scope="session")
def water() -> Atoms:
    return molecule("H2O")
