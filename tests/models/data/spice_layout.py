"""Write a small file in SPICE's published HDF5 layout.

The layout is the one ``downloader/downloader.py`` of openmm/spice-dataset writes (and SPICE-2.0.1.hdf5 on
Zenodo holds): one group per molecule, named after it, with ``subset`` and ``smiles`` ([1] strings; the SMILES is
atom-mapped with explicit hydrogens and formal charges), ``atomic_numbers`` ([N] int16), ``conformations``
([C, N, 3] float32, attribute ``units = 'bohr'``), ``formation_energy`` and ``dft_total_energy`` ([C] float64,
hartree) and ``dft_total_gradient`` ([C, N, 3] float32, hartree/bohr). Labels here come from EMT on rattled
molecules, written in those units (the gradient is minus the force).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
from ase import units
from ase.build import molecule
from ase.calculators.emt import EMT

#: (group name, ASE molecule, mapped SMILES, total charge)
MOLECULES = [("water", "H2O", "[O:1]([H:2])[H:3]", 0),
             ("ammonium", "NH3", "[N+:1]([H:2])([H:3])([H:4])[H:5]", 1)]


def write_spice(path: Path, conformations: int = 3) -> list[dict[str, Any]]:
    """Write the molecules of :data:`MOLECULES` (ammonium's geometry is NH3's: the reader takes the charge from
    the SMILES, which is what is tested) and return the truth in eV, eV/Å and Å."""
    truth = []
    with h5py.File(path, "w") as h5:
        for name, formula, smiles, charge in MOLECULES:
            atoms = molecule(formula)
            pos, energy, forces = [], [], []
            for c in range(conformations):
                a = atoms.copy()
                a.rattle(0.03, seed=c + 7 * len(name))
                a.calc = EMT()
                pos.append(a.positions.copy())
                energy.append(a.get_potential_energy())
                forces.append(a.get_forces())
            group = h5.create_group(name)
            group.create_dataset("subset", data=["SPICE test"], dtype=h5py.string_dtype())
            group.create_dataset("smiles", data=[smiles], dtype=h5py.string_dtype())
            group.create_dataset("atomic_numbers", data=atoms.numbers, dtype=np.int16)
            ds = group.create_dataset("conformations", data=np.array(pos) / units.Bohr, dtype=np.float32)
            ds.attrs["units"] = "bohr"
            e_h = np.array(energy) / units.Hartree
            group.create_dataset("formation_energy", data=e_h + 1.0, dtype=np.float64).attrs["units"] = "hartree"
            group.create_dataset("dft_total_energy", data=e_h, dtype=np.float64).attrs["units"] = "hartree"
            grad = -np.array(forces) / (units.Hartree / units.Bohr)
            group.create_dataset("dft_total_gradient", data=grad, dtype=np.float32).attrs["units"] = "hartree/bohr"
            for c in range(conformations):
                # what the file holds, back in eV / Å (float32 positions and gradients round)
                truth.append({"origin": f"{name}:{c}", "numbers": atoms.numbers.tolist(), "charge": charge,
                              "energy": float(e_h[c] * units.Hartree),
                              "pos": np.asarray(pos[c]),
                              "forces": forces[c]})
    return truth
