"""Acquisition scores: which screened candidates an active-learning round should label next.

Every criterion maps a candidate to one score, **lower is picked first** (the screening app keeps the ``top_k``
lowest scores of its shard, so one code path serves screening for discovery and selection for labelling):

* ``energy``: the criterion head's energy per atom (eV/atom) — discovery, the screening default;
* ``uncertainty``: minus the ensemble's disagreement — the spread of the atoms' predicted forces over the members
  (eV/Å, the norm of the per-component standard deviation; per structure its largest, mean or sum:
  :func:`structure_force_spread`) when forces are computed, else the standard deviation of the energy per atom
  (eV/atom): query by committee;
* ``lcb``: the lower confidence bound ``energy per atom - kappa * std of the energy per atom`` (eV/atom): low
  energies the ensemble is unsure of (Bayesian optimisation's exploration/exploitation trade-off);
* ``random``: a uniform draw that depends only on (``seed``, the candidate's index): the baseline every rule is
  measured against, the same candidates whatever the shard layout.
"""

from __future__ import annotations

from typing import get_args

import numpy as np

from models.contracts.screen import Criterion

CRITERIA: tuple[str, ...] = get_args(Criterion)
#: Salt of the random criterion's stream (kept apart from the generators' streams).
RANDOM_SALT = 104729


def structure_force_spread(per_atom: np.ndarray, natoms: np.ndarray, how: str = "max") -> np.ndarray:
    """One force disagreement per structure from the per-atom ones.

    Args:
        per_atom: [N] each atom's force disagreement over the ensemble, eV/Å.
        natoms: [G] atoms per structure (``per_atom`` is their concatenation).
        how: ``max`` (the worst atom: DP-GEN's model deviation), ``mean`` (the typical atom) or ``sum`` (every
            atom's: what labelling the structure could teach, larger structures weighing more).

    Returns:
        [G] eV/Å.
    """
    starts = np.concatenate([[0], np.cumsum(natoms)[:-1]]).astype(np.int64)
    if how == "max":
        return np.maximum.reduceat(per_atom, starts)
    total = np.add.reduceat(per_atom, starts)
    if how == "sum":
        return total
    if how == "mean":
        return total / natoms
    raise ValueError(f"force spread must be max, mean or sum, not {how!r}")


def random_keys(seed: int, index: np.ndarray) -> np.ndarray:
    """[G] uniform [0, 1) draws, each a pure function of (``seed``, ``index[g]``)."""
    return np.array([np.random.default_rng([seed, int(i), RANDOM_SALT]).random() for i in index], dtype=np.float64)


def scores(criterion: str, *, index: np.ndarray, energy_per_atom: np.ndarray, energy_std_per_atom: np.ndarray,
           force_std_max: np.ndarray | None, kappa: float = 1.0, seed: int = 0) -> np.ndarray:
    """[G] acquisition scores (lower first) of a block of candidates.

    Args:
        criterion: One of :data:`CRITERIA`.
        index: [G] the candidates' positions in their source.
        energy_per_atom: [G] ensemble-mean energy per atom, eV/atom.
        energy_std_per_atom: [G] ensemble standard deviation of the energy per atom, eV/atom (NaN: one model).
        force_std_max: [G] each structure's force disagreement (:func:`structure_force_spread`), eV/Å, or None
            (forces not computed).
        kappa: Weight of the spread in ``lcb``.
        seed: Seed of ``random``.

    Raises:
        ValueError: an unknown criterion, or one that needs an ensemble given a single model (NaN spreads).
    """
    if criterion == "energy":
        return energy_per_atom
    if criterion == "random":
        return random_keys(seed, index)
    spread = force_std_max if (criterion == "uncertainty" and force_std_max is not None) else energy_std_per_atom
    if spread.size and np.isnan(spread).all():
        raise ValueError(f"criterion {criterion!r} needs an ensemble (two or more models)")
    if criterion == "uncertainty":
        return -spread
    if criterion == "lcb":
        return energy_per_atom - kappa * energy_std_per_atom
    raise ValueError(f"unknown criterion {criterion!r} (one of {', '.join(CRITERIA)})")
