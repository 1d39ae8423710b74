"""Deterministic demo datasets labelled by real physics (no random labels).

* ``emt``: metals and alloys of Cu, Ag, Au, Ni, Pd, Pt, Al — rattled / strained bulk cells (random
  substitutional alloys), fcc(111) slabs and icosahedral / cuboctahedral clusters — labelled with ASE's EMT
  (energy, forces; stress for bulk cells).
* ``xtb``: small closed-shell molecules of the G2 set, rattled and stretched, labelled with GFN2-xTB or
  GFN1-xTB (``tblite``). The geometry of structure ``k`` depends on (seed, k) only, not on the method, so
  ``demo-gfn2`` and ``demo-gfn1`` hold the same molecules at two fidelities.
* ``dft`` (optional, needs PySCF: the ``[dft]`` extra): a high-fidelity subset of those same molecules, the
  small ones (at most :data:`DFT_MAX_ATOMS` atoms of H, C, N, O, F), labelled with restricted Kohn-Sham DFT
  (B3LYP/6-31G* by default: energy and analytic forces, converted from Hartree, Bohr to eV, Å).

Structure ``k`` of a dataset is a pure function of (seed, k), so shards over index ranges concatenate to the
same set as one run.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.cluster import Icosahedron, Octahedron

METALS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al")
#: Closed-shell G2 molecules (even electron count, singlet ground state) with at most 12 atoms.
MOLECULES = (
    "H2O", "NH3", "CH4", "C2H2", "C2H4", "C2H6", "HCN", "CO", "CO2", "H2CO", "CH3OH", "CH3CHO", "HCOOH",
    "CH3CN", "CH3NH2", "N2", "HF", "H2O2", "CH3CH2OH", "CH3COOH", "CH3OCH3", "HCOOCH3", "CH3CONH2",
    "H2CCO", "SiH4", "PH3", "H2S", "HCl", "CH3Cl", "CH3SH", "CH2OCH2", "C4H4O", "C6H6", "CH3CH2NH2",
    "CH2NHCH2", "HCONH2", "N2H4", "CH3NO2", "CF4", "CH3CH2OCH3",
)  # fmt: skip


def _closed_shell(names: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for n in names:
        try:
            m = molecule(n)
        except KeyError:
            continue
        if int(m.numbers.sum()) % 2 == 0 and len(m) <= 12:
            out.append(n)
    return tuple(out)


MOLECULES = _closed_shell(MOLECULES)


#: Largest molecule of the DFT subset (B3LYP/6-31G* with forces takes about a second per molecule up to here).
DFT_MAX_ATOMS = 5
DFT_ELEMENTS = frozenset({1, 6, 7, 8, 9})


def _rng(seed: int, index: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, salt])


# ------------------------------------------------------------------------------------------------- metals
def metal_structure(seed: int, index: int) -> Atoms:
    """Unlabelled metal structure ``index`` of the EMT demo (bulk 60 %, slab 20 %, cluster 20 %)."""
    rng = _rng(seed, index, 1)
    host = str(rng.choice(METALS))
    kind = rng.choice(["bulk", "slab", "cluster"], p=[0.6, 0.2, 0.2])
    if kind == "bulk":
        reps = [(2, 2, 2), (2, 2, 1), (1, 2, 2), (3, 1, 1)][int(rng.integers(4))]
        atoms = bulk(host, "fcc", cubic=True).repeat(reps)
        strain = np.eye(3) + rng.normal(0.0, 0.02, (3, 3))
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
    elif kind == "slab":
        atoms = fcc111(host, size=(2, 2, 3), vacuum=6.0)
        atoms.pbc = (True, True, False)
    else:
        atoms = Icosahedron(host, 2) if rng.random() < 0.5 else Octahedron(host, 3, 1)
        atoms.center(vacuum=5.0)
        atoms.pbc = False
    if rng.random() < 0.6:  # random substitutional alloy
        guest = str(rng.choice([m for m in METALS if m != host]))
        mask = rng.random(len(atoms)) < rng.uniform(0.1, 0.5)
        symbols = np.array(atoms.get_chemical_symbols(), dtype=object)
        symbols[mask] = guest
        atoms.set_chemical_symbols(list(symbols))
    atoms.positions += rng.normal(0.0, rng.uniform(0.02, 0.12), atoms.positions.shape)
    atoms.info = {"demo_kind": str(kind)}
    return atoms


# ---------------------------------------------------------------------------------------------- molecules
def molecule_structure(seed: int, index: int) -> Atoms:
    """Unlabelled molecule ``index`` of the xTB demo: a G2 molecule, isotropically stretched and rattled."""
    rng = _rng(seed, index, 2)
    name = str(MOLECULES[int(rng.integers(len(MOLECULES)))])
    atoms = molecule(name)
    com = atoms.get_center_of_mass()
    atoms.positions = com + (atoms.positions - com) * rng.uniform(0.95, 1.08)
    atoms.positions += rng.normal(0.0, rng.uniform(0.01, 0.08), atoms.positions.shape)
    atoms.cell = np.zeros((3, 3))
    atoms.pbc = False
    atoms.info["demo_kind"] = name
    return atoms


# -------------------------------------------------------------------------------------------------- label
def _label(atoms: Atoms, calc: object, stress: bool) -> Atoms:
    atoms.calc = calc
    results = {"energy": float(atoms.get_potential_energy()), "forces": atoms.get_forces().copy()}
    if stress:
        results["stress"] = atoms.get_stress(voigt=True).copy()
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def xtb_calculator(method: str) -> object:
    """A tblite ASE calculator for ``method`` (``GFN2-xTB`` or ``GFN1-xTB``), silent."""
    from tblite.ase import TBLite

    return TBLite(method=method, verbosity=0)


# ------------------------------------------------------------------------------------------- DFT subset
def dft_subset_indices(seed: int, start: int, count: int) -> list[int]:
    """Indices ``j`` into the xTB demo sequence of DFT structures ``start … start+count-1``.

    DFT structure ``k`` is the ``k``-th molecule of the xTB sequence (same seed) with at most
    :data:`DFT_MAX_ATOMS` atoms, all in :data:`DFT_ELEMENTS`: the same geometry as ``demo-gfn2`` / ``demo-gfn1``
    structure ``j``, so the three fidelities overlap.
    """
    out: list[int] = []
    j, k = 0, 0
    while len(out) < count:
        atoms = molecule_structure(seed, j)
        if len(atoms) <= DFT_MAX_ATOMS and set(atoms.numbers.tolist()) <= DFT_ELEMENTS:
            if k >= start:
                out.append(j)
            k += 1
        j += 1
    return out


def dft_label(atoms: Atoms, xc: str = "B3LYP", basis: str = "6-31G*") -> Atoms:
    """Label a closed-shell molecule with restricted Kohn-Sham DFT (PySCF): energy and analytic forces.

    Args:
        atoms: The molecule (positions in Å, no periodicity).
        xc: Exchange-correlation functional (PySCF name).
        basis: Gaussian basis set (PySCF name).

    Returns:
        ``atoms`` with a ``SinglePointCalculator`` holding the energy (eV) and forces (eV/Å).

    Raises:
        ImportError: PySCF is not installed (``pip install 'campaign[dft]'``).
        RuntimeError: The SCF did not converge.
    """
    from ase.units import Bohr, Hartree
    from pyscf import dft, gto

    mol = gto.M(
        atom=[(sym, tuple(xyz)) for sym, xyz in zip(atoms.get_chemical_symbols(), atoms.positions, strict=True)],
        basis=basis, unit="Angstrom", charge=0, spin=0, verbose=0,
    )  # fmt: skip
    mf = dft.RKS(mol)
    mf.xc = xc
    energy = float(mf.kernel())
    if not mf.converged:
        raise RuntimeError(f"{xc}/{basis} SCF did not converge for {atoms.get_chemical_formula()}")
    grad = np.asarray(mf.nuc_grad_method().kernel())  # [N, 3] Hartree/Bohr
    atoms.calc = SinglePointCalculator(atoms, energy=energy * Hartree, forces=-grad * Hartree / Bohr)
    return atoms


def generate(
    kind: str,
    seed: int,
    start: int,
    count: int,
    method: str = "GFN2-xTB",
    xc: str = "B3LYP",
    basis: str = "6-31G*",
) -> Iterator[Atoms]:
    """Yield labelled structures ``start … start+count-1`` (each with a ``SinglePointCalculator``).

    Args:
        kind: ``emt``, ``xtb`` or ``dft`` (the registry ``generator.kind``).
        seed: Base seed of the dataset.
        start: First structure index.
        count: Number of structures.
        method: xTB method (``GFN2-xTB`` / ``GFN1-xTB``) for ``kind='xtb'``.
        xc: Functional for ``kind='dft'``.
        basis: Basis set for ``kind='dft'``.
    """
    if kind == "emt":
        calc = EMT()
        for k in range(start, start + count):
            atoms = metal_structure(seed, k)
            yield _label(atoms, calc, stress=bool(atoms.pbc.all()))
    elif kind == "xtb":
        calc = xtb_calculator(method)
        for k in range(start, start + count):
            yield _label(molecule_structure(seed, k), calc, stress=False)
    elif kind == "dft":
        for j in dft_subset_indices(seed, start, count):
            yield dft_label(molecule_structure(seed, j), xc=xc, basis=basis)
    else:
        raise ValueError(f"unknown demo generator kind {kind!r} (emt, xtb or dft)")
