"""Small EMT-labelled datasets written as real ADIOS2 graph stores (real physics, not random labels):
rattled, strained fcc Cu/Ag/Au cells (periodic, with stress) and rattled small H/C/N/O molecules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from models.data.graphs import radius_graph_pbc
from models.data.shards import pack_graphs, write_split

METALS = [("Cu", 3.61), ("Ag", 4.09), ("Au", 4.08)]
MOLECULES = ["H2O", "CH4", "NH3", "C2H4", "CH3OH", "HCN"]


def record(atoms: Atoms, cutoff: float, sid: int) -> dict[str, Any]:
    """EMT-label ``atoms`` and build the store record (graph with local edges) of :func:`pack_graphs`."""
    atoms = atoms.copy()
    atoms.calc = EMT()
    periodic = bool(atoms.pbc.any())
    cell = np.asarray(atoms.cell[:]) if periodic else np.zeros((3, 3))
    edge_index, shift, _ = radius_graph_pbc(atoms.positions, cell, atoms.pbc, cutoff)
    return {
        "z": atoms.numbers,
        "pos": atoms.positions,
        "forces": atoms.get_forces(),
        "cell": cell,
        "pbc": atoms.pbc,
        "energy": float(atoms.get_potential_energy()),
        "eref": 0.0,
        "stress": atoms.get_stress(voigt=False) if periodic else None,
        "sid": sid,
        "edge_index": edge_index,
        "shift": shift,
    }


def metal_atoms(count: int, seed: int, repeat: tuple[int, int, int] = (2, 1, 1)) -> list[Atoms]:
    """``count`` rattled, strained fcc cells of Cu, Ag or Au (8 atoms each by default)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        el, a = METALS[k % 3]
        atoms = bulk(el, "fcc", a=a * rng.uniform(0.97, 1.03), cubic=True).repeat(repeat)
        atoms.rattle(stdev=0.08, seed=int(rng.integers(1 << 31)))
        out.append(atoms)
    return out


def molecule_atoms(count: int, seed: int) -> list[Atoms]:
    """``count`` rattled small H/C/N/O molecules (EMT has parameters for these elements)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        atoms = molecule(MOLECULES[k % len(MOLECULES)])
        atoms.rattle(stdev=0.05, seed=int(rng.integers(1 << 31)))
        out.append(atoms)
    return out


def write_dataset(
    root: Path, name: str, head: int, atoms: dict[str, list[Atoms]], cutoff: float = 5.0
) -> None:
    """Write ``{split: structures}`` as ``<root>/<name>/<split>`` stores feeding ``head``."""
    meta = {"dataset": name, "head_id": head, "cutoff": cutoff, "units": {"energy": "eV", "length": "Å"}}
    sid = 0
    for split, structures in atoms.items():
        recs = []
        for a in structures:
            recs.append(record(a, cutoff, sid))
            sid += 1
        write_split(Path(root) / name / split, pack_graphs(recs), meta)


def demo_root(root: Path, n_train: int = 12, n_val: int = 6, n_test: int = 6, cutoff: float = 5.0) -> Path:
    """Two datasets: ``metals`` (head 0) and ``molecules`` (head 1), each with train/val/test splits."""
    write_dataset(
        root,
        "metals",
        0,
        {"train": metal_atoms(n_train, 1), "val": metal_atoms(n_val, 2), "test": metal_atoms(n_test, 3)},
        cutoff,
    )
    write_dataset(
        root,
        "molecules",
        1,
        {
            "train": molecule_atoms(n_train, 4),
            "val": molecule_atoms(n_val, 5),
            "test": molecule_atoms(n_test, 6),
        },
        cutoff,
    )
    return root
