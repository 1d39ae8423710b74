"""Seeded generator of candidate structures for screening: random compositions and geometries in a box.

Candidate ``k`` of a generator is a pure function of ``(seed, k)`` (its own ``numpy`` generator seeded with
``[seed, k, SALT]``), so shards over disjoint index ranges give the same structures as one big run, and a failed
shard re-runs identically.

Each candidate:

* has ``natoms`` drawn uniformly from ``[min_atoms, max_atoms]``;
* has ``1 … min(max_species, len(elements))`` species chosen from ``elements``, with Dirichlet fractions
  turned into integer counts (every chosen species appears at least once when ``natoms`` allows);
* lives in an orthorhombic periodic cell (or, with ``periodic=False``, a cluster cut from such a box) of
  volume ``sum_i (4/3)π r_cov,i^3 x 1.5 x packing`` (14-20 Å^3 per Cu atom; ``packing`` uniform in
  ``[1.0, 1.4]``) and random aspect ratios (each side within ±15 %);
* has positions placed by random sequential addition: a trial position is rejected when it comes closer than
  ``overlap x (r_cov,i + r_cov,j)`` to an atom already placed (minimum image in periodic cells). Should the cell
  fill up before every atom is placed, it grows by 5 % and placement restarts, so no candidate ever has
  overlapping atoms.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, covalent_radii

#: Salt of the per-candidate random generator (keeps these streams apart from the demo datasets').
SALT = 7919


@dataclass(frozen=True)
class CandidateSpec:
    """How candidates are drawn.

    Attributes:
        elements: Chemical symbols to draw from.
        min_atoms: Fewest atoms per candidate.
        max_atoms: Most atoms per candidate.
        max_species: Most distinct elements per candidate.
        periodic: Periodic cells (bulk-like) or clusters in a box (``pbc`` False).
        overlap: Two atoms are "overlapping" when closer than ``overlap x (r_cov,i + r_cov,j)``.
        packing: Range of the volume factor over the close-packed volume.
    """

    elements: Sequence[str] = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al")
    min_atoms: int = 2
    max_atoms: int = 64
    max_species: int = 4
    periodic: bool = True
    overlap: float = 0.7
    packing: tuple[float, float] = field(default=(1.0, 1.4))

    def __post_init__(self) -> None:
        unknown = [e for e in self.elements if e not in atomic_numbers]
        if not self.elements or unknown:
            raise ValueError(f"elements must be chemical symbols, got unknown {unknown or 'none at all'}")
        if not 1 <= self.min_atoms <= self.max_atoms:
            raise ValueError(f"need 1 <= min_atoms ({self.min_atoms}) <= max_atoms ({self.max_atoms})")
        if self.max_species < 1:
            raise ValueError("max_species must be >= 1")
        if not 0 < self.overlap < 1.2:
            raise ValueError("overlap must be in (0, 1.2)")


def _composition(rng: np.random.Generator, spec: CandidateSpec, natoms: int) -> np.ndarray:
    """[natoms] atomic numbers in random order."""
    nspec = int(rng.integers(1, min(spec.max_species, len(spec.elements)) + 1))
    chosen = rng.choice(len(spec.elements), size=nspec, replace=False)
    z_choice = np.array([atomic_numbers[spec.elements[i]] for i in chosen], dtype=np.int64)
    frac = rng.dirichlet(np.ones(nspec))
    counts = np.ones(nspec, dtype=np.int64) if natoms >= nspec else np.zeros(nspec, dtype=np.int64)
    rest = natoms - int(counts.sum())
    counts += rng.multinomial(rest, frac)
    z = np.repeat(z_choice, counts)
    return z[rng.permutation(natoms)]


def _place(
    rng: np.random.Generator, radii: np.ndarray, lengths: np.ndarray, periodic: bool, overlap: float
) -> np.ndarray | None:
    """Random sequential addition of ``len(radii)`` atoms in an orthorhombic box of side ``lengths`` [3], Å.

    Trials are drawn in rounds, each for one not-yet-placed atom; a trial is kept when it is clear of every
    atom placed so far and of every earlier trial of its round, so the kept set never overlaps without a
    per-atom Python loop. Returns [N, 3] positions, or ``None`` when the box is too full (the caller grows it).
    """
    n = radii.size
    pos = np.zeros((n, 3))
    done = np.zeros(n, dtype=bool)
    for _ in range(100):
        todo = np.flatnonzero(~done)
        if todo.size == 0:
            return pos
        m = 2 * todo.size + 8
        atom = todo[np.arange(m) % todo.size]
        r = radii[atom]
        trial = rng.random((m, 3)) * lengths
        ok = np.ones(m, dtype=bool)
        have = np.flatnonzero(done)
        if have.size:
            d = trial[:, None, :] - pos[None, have, :]
            if periodic:
                d -= np.round(d / lengths) * lengths
            ok &= ~np.any((d**2).sum(-1) < (overlap * (r[:, None] + radii[None, have])) ** 2, axis=1)
        d = trial[:, None, :] - trial[None, :, :]
        if periodic:
            d -= np.round(d / lengths) * lengths
        clash = np.triu((d**2).sum(-1) < (overlap * (r[:, None] + r[None, :])) ** 2, k=1)  # [j, i], j < i
        ok &= ~clash.any(axis=0)
        keep = np.flatnonzero(ok)
        _, first = np.unique(atom[keep], return_index=True)  # one position per atom: its first kept trial
        keep = keep[first]
        pos[atom[keep]] = trial[keep]
        done[atom[keep]] = True
    return pos if done.all() else None


def candidate(seed: int, index: int, spec: CandidateSpec) -> Atoms:
    """Candidate ``index`` of the generator seeded with ``seed`` (see the module docstring).

    Returns:
        An ``ase.Atoms`` with ``info["candidate"] = index`` and ``info["structure_id"] = "gen-<seed>-<index>"``.
    """
    rng = np.random.default_rng([seed, index, SALT])
    natoms = int(rng.integers(spec.min_atoms, spec.max_atoms + 1))
    z = _composition(rng, spec, natoms)
    radii = covalent_radii[z]
    volume = float(np.sum((4.0 / 3.0) * np.pi * radii**3 * 1.5)) * rng.uniform(*spec.packing)
    aspect = rng.uniform(0.85, 1.15, 3)
    lengths = aspect / np.cbrt(aspect.prod()) * np.cbrt(volume)
    # an atom must also clear its own periodic images
    lengths = np.maximum(lengths, 2.0 * spec.overlap * float(radii.max()) * 1.01)
    while True:
        pos = _place(rng, radii, lengths, spec.periodic, spec.overlap)
        if pos is not None:
            break
        lengths = lengths * 1.05
    if spec.periodic:
        atoms = Atoms(numbers=z, positions=pos, cell=np.diag(lengths), pbc=True)
    else:
        atoms = Atoms(numbers=z, positions=pos - pos.mean(axis=0), pbc=False)
    atoms.info["candidate"] = int(index)
    atoms.info["structure_id"] = f"gen-{seed}-{index}"
    return atoms


def candidates(seed: int, start: int, count: int, spec: CandidateSpec) -> Iterator[Atoms]:
    """Candidates ``start … start+count-1`` of the generator seeded with ``seed``."""
    for k in range(start, start + count):
        yield candidate(seed, k, spec)


def min_pair_distance_ratio(atoms: Atoms) -> float:
    """Smallest ``d_ij / (r_cov,i + r_cov,j)`` over all pairs (minimum image); ``inf`` for one atom.

    Used by tests and by callers that check candidates from elsewhere for overlapping atoms.
    """
    n = len(atoms)
    if n < 2:
        return float("inf")
    d = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
    r = covalent_radii[atoms.numbers]
    ratio = d / (r[:, None] + r[None, :])
    ratio[np.arange(n), np.arange(n)] = np.inf
    return float(ratio.min())
