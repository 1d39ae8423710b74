"""Small graphs labelled by ASE's EMT calculator (real physics), built with vesin neighbour lists."""

from __future__ import annotations

import numpy as np
import torch
import vesin
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from torch_geometric.data import Batch, Data

from models import keys


def atoms_to_data(atoms: Atoms, cutoff: float, head: int = 0, has_forces: bool = True,
                  dtype: torch.dtype = torch.float64) -> Data:
    """One graph with EMT labels and a full neighbour list (``edge_index[0]`` = j, ``[1]`` = i)."""
    periodic = bool(atoms.pbc.any())
    box = atoms.cell.array if periodic else np.zeros((3, 3))
    nl = vesin.NeighborList(cutoff=cutoff, full_list=True)
    i, j, s = nl.compute(points=atoms.positions, box=box, periodic=periodic, quantities="ijS")
    atoms = atoms.copy()
    atoms.calc = EMT()
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    stress = atoms.get_stress(voigt=False) if periodic else np.full((3, 3), np.nan)
    n = len(atoms)
    return Data(**{
        keys.Z: torch.as_tensor(atoms.numbers, dtype=torch.long),
        keys.POS: torch.as_tensor(atoms.positions, dtype=dtype),
        keys.CELL: torch.as_tensor(box, dtype=dtype).unsqueeze(0),
        keys.PBC: torch.as_tensor(atoms.pbc, dtype=torch.bool).unsqueeze(0),
        keys.EDGE_INDEX: torch.as_tensor(np.stack([j, i]), dtype=torch.long),
        keys.SHIFT: torch.as_tensor(s, dtype=dtype),
        keys.ENERGY: torch.tensor([energy], dtype=dtype),
        keys.FORCES: torch.as_tensor(forces, dtype=dtype) if has_forces else torch.full((n, 3), float("nan"),
                                                                                         dtype=dtype),
        keys.STRESS: torch.as_tensor(stress, dtype=dtype).unsqueeze(0),
        keys.HEAD: torch.tensor([head]),
        keys.NATOMS: torch.tensor([n]),
        keys.EREF: torch.zeros(1, dtype=dtype),
        keys.SID: torch.tensor([hash(atoms.positions.tobytes()) % 2**62]),
        keys.HAS_FORCES: torch.tensor([has_forces]),
        keys.HAS_STRESS: torch.tensor([periodic]),
    })


def cu_cell(seed: int = 0, rattle: float = 0.08) -> Atoms:
    """A rattled, slightly sheared 8-atom fcc Cu cell."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((1, 1, 2))
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.03, 0.0], [0.0, 1.0, 0.02], [0.0, 0.0, 0.98]]),
                   scale_atoms=True)
    atoms.rattle(rattle, seed=seed)
    return atoms


def agau_cell(seed: int = 1) -> Atoms:
    """A rattled 4-atom fcc Au cell with one Ag."""
    atoms = bulk("Au", "fcc", a=4.08, cubic=True)
    atoms.numbers[0] = 47
    atoms.rattle(0.05, seed=seed)
    return atoms


def cu_cluster(seed: int = 2) -> Atoms:
    """A non-periodic 6-atom Cu cluster (octahedron, rattled)."""
    d = 1.8
    pos = np.array([[d, 0, 0], [-d, 0, 0], [0, d, 0], [0, -d, 0], [0, 0, d], [0, 0, -d]], dtype=float)
    atoms = Atoms("Cu6", positions=pos)
    atoms.rattle(0.05, seed=seed)
    return atoms


def small_molecule() -> Atoms:
    """Methanol (C, H, O are in ASE's EMT parameter set)."""
    atoms = molecule("CH3OH")
    atoms.rattle(0.02, seed=3)
    return atoms


def mixed_batch(cutoff: float = 4.0, dtype: torch.dtype = torch.float64) -> Batch:
    """Periodic Cu (head 0), a Cu cluster without force labels (head 1), AgAu (head 2), methanol (head 1)."""
    return Batch.from_data_list([
        atoms_to_data(cu_cell(), cutoff, head=0, dtype=dtype),
        atoms_to_data(cu_cluster(), cutoff, head=1, has_forces=False, dtype=dtype),
        atoms_to_data(agau_cell(), cutoff, head=2, dtype=dtype),
        atoms_to_data(small_molecule(), cutoff, head=1, dtype=dtype),
    ])


def tiny_config(family: str, cutoff: float = 4.0, heads: tuple[int, ...] = (0, 1, 2)) -> dict:
    """A tiny model config (hidden 16, 2 layers) for tests."""
    cfg = {"family": family, "hidden": 16, "layers": 2, "cutoff": cutoff, "num_rbf": 8, "heads": list(heads),
           "max_z": 90}
    if family == "dimenet++":
        cfg.update(int_emb_size=8, basis_emb_size=4, out_emb_channels=16, num_spherical=4, num_radial=4)
    if family == "mace":
        cfg.update(max_ell=2, hidden_ell=1, avg_num_neighbors=8.0)
    if family == "egnn":
        cfg.update(avg_num_neighbors=8.0)
    if family == "pna":
        cfg.update(deg=[0, 1, 1, 2, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4])
    return cfg
