"""Write a small file in QM7-X's published HDF5 layout.

The layout is that of the files on Zenodo record 4288677 (``1000.hdf5`` … ``8000.hdf5``, published
xz-compressed) as J. Hoja et al., Sci. Data 8, 43 (2021) describe them and the example reader shipped with the
record reads them: one group per molecule id (``"1"``, ``"2"``, …), in it one group per geometry named
``Geom-m<mol>-i<isomer>-c<conformer>-opt`` (equilibrium) or ``…-c<conformer>-d<displacement>``, holding
``atNUM`` ([N] int), ``atXYZ`` ([N, 3] float64, Å), ``ePBE0+MBD``, ``eAT``, ``ePBE0``, ``eMBD`` ([1] float64,
eV), ``totFOR``, ``pbe0FOR``, ``vdwFOR`` ([N, 3] float64, eV/Å) and many more properties (here ``HLgap``,
``DIP``). Labels here come from EMT on rattled molecules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
from ase.build import molecule
from ase.calculators.emt import EMT

#: (molecule id, ASE molecule, geometries: (isomer, conformer, displacement or None for -opt))
MOLECULES = [("1", "CH4", [(1, 1, None), (1, 1, 1), (1, 1, 2)]),
             ("23", "H2O", [(1, 1, None), (1, 2, None)])]


def write_qm7x(path: Path) -> list[dict[str, Any]]:
    """Write :data:`MOLECULES` and return what each geometry holds (eV, eV/Å, Å), by ``<mol>/<geometry>``."""
    truth = []
    with h5py.File(path, "w") as h5:
        for mol, formula, geometries in MOLECULES:
            group = h5.create_group(mol)
            for k, (i, c, d) in enumerate(geometries):
                name = f"Geom-m{mol}-i{i}-c{c}-" + ("opt" if d is None else f"d{d}")
                atoms = molecule(formula)
                if d is not None or k:
                    atoms.rattle(0.05, seed=k + 10 * int(mol))
                atoms.calc = EMT()
                e, f = atoms.get_potential_energy(), atoms.get_forces()
                g = group.create_group(name)
                g.create_dataset("atNUM", data=atoms.numbers.astype(np.int64))
                g.create_dataset("atXYZ", data=atoms.positions)
                g.create_dataset("ePBE0+MBD", data=[e])
                g.create_dataset("eAT", data=[e - 10.0])
                g.create_dataset("ePBE0", data=[e + 0.1])
                g.create_dataset("eMBD", data=[-0.1])
                g.create_dataset("totFOR", data=f)
                g.create_dataset("pbe0FOR", data=f * 0.99)
                g.create_dataset("vdwFOR", data=f * 0.01)
                g.create_dataset("HLgap", data=[5.0])
                g.create_dataset("DIP", data=[1.0])
                truth.append({"origin": f"{mol}/{name}", "numbers": atoms.numbers.tolist(), "energy": e,
                              "atomisation": e - 10.0, "pos": atoms.positions.copy(), "forces": f})
    return truth
