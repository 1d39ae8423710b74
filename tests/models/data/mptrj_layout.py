"""Write a small file in MPtrj's published layout (``MPtrj_2022.9_full.json``, figshare 23713842).

The layout is the CHGNet authors' (B. Deng et al., Nat. Mach. Intell. 5, 1031 (2023)), as the converters of
Matbench Discovery read it (``models/sevennet/train_sevennet/convert_mptrj_to_xyz.py`` in janosh/matbench-discovery):
``{material_id: {"<material>-<calc>-<step>": frame}}``; each frame holds a pymatgen ``Structure.as_dict()``
(``lattice.matrix``, ``sites[].species[].element``, ``sites[].xyz``), ``uncorrected_total_energy`` and
``corrected_total_energy`` (eV), ``energy_per_atom``, ``ef_per_atom``, ``e_per_atom_relaxed``,
``ef_per_atom_relaxed``, ``force`` (eV/Å), ``stress`` (3x3, kBar, VASP sign: positive = compressive), ``magmom``,
``bandgap`` and ``mp_id``. The labels here come from EMT on rattled cells, written in those units and signs.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT


def _structure_dict(atoms: Atoms) -> dict[str, Any]:
    cell = atoms.cell[:]
    frac = atoms.get_scaled_positions()
    return {
        "@module": "pymatgen.core.structure", "@class": "Structure", "charge": 0,
        "lattice": {"matrix": cell.tolist(), "pbc": [True, True, True], "a": float(atoms.cell.lengths()[0]),
                    "b": float(atoms.cell.lengths()[1]), "c": float(atoms.cell.lengths()[2]),
                    "alpha": 90.0, "beta": 90.0, "gamma": 90.0, "volume": float(atoms.get_volume())},
        "properties": {},
        "sites": [{"species": [{"element": s, "occu": 1}], "abc": f.tolist(), "xyz": p.tolist(), "label": s,
                   "properties": {"magmom": 0.0}}
                  for s, f, p in zip(atoms.get_chemical_symbols(), frac, atoms.positions, strict=True)],
    }


def mptrj_frames() -> dict[str, dict[str, Any]]:
    """Two materials, three frames: EMT labels in MPtrj's units and signs, and the ASE truth beside them."""
    out: dict[str, dict[str, Any]] = {}
    for mp, (el, a, steps) in {"mp-30": ("Cu", 3.61, 2), "mp-124": ("Ag", 4.09, 1)}.items():
        out[mp] = {}
        for step in range(steps):
            atoms = bulk(el, "fcc", a=a * (1.0 + 0.01 * step), cubic=True)
            atoms.rattle(0.05, seed=step + len(mp))
            atoms.calc = EMT()
            e = float(atoms.get_potential_energy())
            stress_ase = atoms.get_stress(voigt=False)  # eV/Å^3, positive = tensile
            stress_kbar_vasp = -stress_ase / units.GPa * 10.0  # what VASP (and MPtrj) writes
            n = len(atoms)
            out[mp][f"{mp}-{1000 + step}-{step}"] = {
                "structure": _structure_dict(atoms),
                "uncorrected_total_energy": e, "corrected_total_energy": e - 0.5,
                "energy_per_atom": (e - 0.5) / n, "ef_per_atom": -0.1, "e_per_atom_relaxed": e / n,
                "ef_per_atom_relaxed": -0.1, "force": atoms.get_forces().tolist(),
                "stress": stress_kbar_vasp.tolist(), "magmom": [0.0] * n, "bandgap": 0.0, "mp_id": mp,
                "_truth": {"energy": e, "forces": atoms.get_forces().tolist(), "stress": stress_ase.tolist(),
                           "numbers": atoms.numbers.tolist()},
            }
    return out


def write_mptrj(path: Path, compress: bool = False) -> dict[str, dict[str, Any]]:
    """Write :func:`mptrj_frames` to ``path`` (gzip if ``compress``) without the ``_truth`` keys; return all."""
    frames = mptrj_frames()
    published = {mp: {fid: {k: v for k, v in f.items() if k != "_truth"} for fid, f in fr.items()}
                 for mp, fr in frames.items()}
    text = json.dumps(published).encode()
    path.write_bytes(gzip.compress(text) if compress else text)
    return frames


def truth(frames: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The frames' ASE-convention labels, in file order."""
    return [{"id": fid, **f["_truth"]} for fr in frames.values() for fid, f in fr.items()]


__all__ = ["mptrj_frames", "truth", "write_mptrj"]
