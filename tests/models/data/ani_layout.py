"""Write small files in the HDF5 layouts of ANI-1x and Transition1x as their publishers distribute them.

ANI-1x (``ani1x-release.h5``; J. S. Smith et al., Sci. Data 7, 134 (2020), figshare collection 4712477, and the
example loader ``dataloader.py`` of github.com/aiqm/ANI1x_datasets, ``iter_data_buckets``): one top-level group per
chemical formula (``C1H4``, ``H2O1``, …) holding ``atomic_numbers`` [N], ``coordinates`` [C, N, 3] Å and, per level
of theory, ``<method>.energy`` [C] Hartree and ``<method>.forces`` [C, N, 3] Hartree/Å (``wb97x_dz``, ``wb97x_tz``,
``ccsd(t)_cbs`` …; NaN where a level was not computed for a conformer, as for most CCSD(T) energies).

Transition1x (``Transition1x.h5``; M. Schreiner et al., Sci. Data 9, 779 (2022), figshare 19614657, and the loader
``transition1x/dataloader.py`` of gitlab.com/matschreiner/Transition1x): groups ``data``, ``train``, ``val``,
``test``; ``<split>/<formula>/<reaction>`` holds ``atomic_numbers`` [N], ``positions`` [C, N, 3] Å,
``wB97x_6-31G(d).energy`` [C] eV, ``wB97x_6-31G(d).atomization_energy`` [C] eV and ``wB97x_6-31G(d).forces``
[C, N, 3] eV/Å for the C images of the reaction's NEB path, and the subgroups ``reactant``, ``product`` and
``transition_state`` holding the same fields for one configuration each. ``data`` holds every reaction; the split
groups name the same reactions (here, as hard links to them).

Labels here come from EMT on rattled molecules (converted to the files' units).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.units import Hartree


def _labelled(formula: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(numbers [N], positions [n, N, 3] Å, energies [n] eV, forces [n, N, 3] eV/Å) of ``n`` rattled copies."""
    base = molecule(formula)
    pos, e, f = [], [], []
    for k in range(n):
        a = base.copy()
        a.rattle(0.05, seed=seed + k)
        a.calc = EMT()
        pos.append(a.positions)
        e.append(a.get_potential_energy())
        f.append(a.get_forces())
    return base.numbers, np.array(pos), np.array(e), np.array(f)


def write_ani1x(path: Path) -> dict[str, Any]:
    """Two formula groups; ``wb97x_dz`` for every conformer, ``ccsd(t)_cbs`` (energy only) for some. Returns
    ``{"dft": [(group, conformer, eV, forces eV/Å)], "cc": [(group, conformer, eV)]}``."""
    truth: dict[str, Any] = {"dft": [], "cc": []}
    with h5py.File(path, "w") as h5:
        for name, formula, n in (("C1H4", "CH4", 3), ("H2O1", "H2O", 2)):
            z, pos, e, f = _labelled(formula, n, seed=len(name))
            g = h5.create_group(name)
            g["atomic_numbers"] = z.astype(np.uint8)
            g["coordinates"] = pos
            g["wb97x_dz.energy"] = e / Hartree
            g["wb97x_dz.forces"] = f / Hartree
            cc = np.full(n, np.nan)
            cc[0] = e[0] / Hartree - 0.01
            g["ccsd(t)_cbs.energy"] = cc
            g["wb97x_dz.dipole"] = np.zeros((n, 3))
            truth["dft"] += [(f"/{name}", c, e[c], f[c]) for c in range(n)]
            truth["cc"] += [(f"/{name}", 0, (e[0] / Hartree - 0.01) * Hartree)]
    return truth


def _t1x_fields(g: h5py.Group, z: np.ndarray, pos: np.ndarray, e: np.ndarray, f: np.ndarray) -> None:
    g["atomic_numbers"] = z
    g["positions"] = pos
    g["wB97x_6-31G(d).energy"] = e
    g["wB97x_6-31G(d).atomization_energy"] = e - 100.0
    g["wB97x_6-31G(d).forces"] = f


def write_transition1x(path: Path, copy_splits: bool = False) -> list[tuple[str, np.ndarray, float]]:
    """Two reactions, each a 3-image path plus its reactant, product and transition state, under ``data`` and
    linked from ``train`` / ``test`` (copied there with ``copy_splits``). Returns every configuration once:
    (``<group>[<index>]``, positions Å, energy eV)."""
    truth = []
    with h5py.File(path, "w") as h5:
        for r, (formula, rxn, split) in enumerate((("C1H4", "rxn0001", "train"), ("C1H4", "rxn0002", "test"))):
            z, pos, e, f = _labelled("CH4", 6, seed=100 * (r + 1))
            g = h5.create_group(f"data/{formula}/{rxn}")
            _t1x_fields(g, z, pos[:3], e[:3], f[:3])
            truth += [(f"/data/{formula}/{rxn}[{c}]", pos[c], e[c]) for c in range(3)]
            for k, sub in enumerate(("reactant", "product", "transition_state")):
                _t1x_fields(g.create_group(sub), z, pos[3 + k:4 + k], e[3 + k:4 + k], f[3 + k:4 + k])
                truth.append((f"/data/{formula}/{rxn}/{sub}[0]", pos[3 + k], e[3 + k]))
            if copy_splits:
                h5.copy(g, h5.require_group(f"{split}/{formula}"), name=rxn)
            else:
                h5.require_group(f"{split}/{formula}")[rxn] = g  # a hard link: the same reaction, named again
        h5.create_group("val")
    return truth
