"""Write a small file in the layout of Alexandria's published geometry-optimisation paths (PBE 3D ``*.json.bz2``
at alexandria.icams.rub.de; J. Schmidt et al., Mater. Today Phys. 48, 101560 (2024)).

The layout is the one the MACE-MP and ColabFit converters of those files read: ``{alex_id: [calculation, ...]}``,
each calculation a dict of VASP settings (``kpoints``, ``PREC``, ``ENMAX``, ``ENAUG``, …) with ``steps``, its
ionic steps, each holding a pymatgen ``Structure.as_dict()`` (``structure``), ``energy`` (VASP total energy,
eV), ``forces`` (eV/Å) and ``stress`` (3x3, kBar, VASP sign: positive = compressive); bzip2-compressed. Labels
here come from EMT on rattled, strained cells written in those units and signs.
"""

from __future__ import annotations

import bz2
import json
from pathlib import Path
from typing import Any

from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT

from tests.models.data.mptrj_layout import _structure_dict

#: Alexandria id -> (element, lattice constant Å, steps per calculation)
MATERIALS = {"agm002153473": ("Cu", 3.61, (2, 1)), "agm003272798": ("Ni", 3.52, (1,))}


def write_alexandria(path: Path) -> list[dict[str, Any]]:
    """Write :data:`MATERIALS` bzip2-compressed; return each step's ASE-convention truth, in file order."""
    data: dict[str, list[dict[str, Any]]] = {}
    truth = []
    for alex_id, (el, a, per_calc) in MATERIALS.items():
        calcs = []
        for c, n_steps in enumerate(per_calc):
            steps = []
            for k in range(n_steps):
                atoms = bulk(el, "fcc", a=a * (1.0 + 0.01 * (k + c)), cubic=True)
                atoms.rattle(0.04, seed=k + 3 * c + len(alex_id))
                atoms.calc = EMT()
                e = float(atoms.get_potential_energy())
                stress_ase = atoms.get_stress(voigt=False)  # eV/Å^3, positive = tensile
                steps.append({"structure": _structure_dict(atoms), "energy": e,
                              "forces": atoms.get_forces().tolist(),
                              "stress": (-stress_ase / units.GPa * 10.0).tolist()})  # kBar, VASP sign
                truth.append({"id": f"{alex_id}/{c}/{k}", "numbers": atoms.numbers.tolist(), "energy": e,
                              "forces": atoms.get_forces(), "stress": stress_ase, "cell": atoms.cell[:],
                              "pos": atoms.positions.copy()})
            calcs.append({"kpoints": [7, 7, 7], "PREC": "high", "ENMAX": 520.0, "ENAUG": 600.0, "steps": steps})
        data[alex_id] = calcs
    path.write_bytes(bz2.compress(json.dumps(data).encode()))
    return truth
