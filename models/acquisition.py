"""Acquisition scores: which screened candidates an active-learning round should label next.

Every criterion maps a candidate to one score, **lower is picked first** (the screening app keeps the ``top_k``
lowest scores of its shard, so one code path serves screening for discovery and selection for labelling):

* ``energy``: the criterion head's energy per atom (eV/atom) — discovery, the screening default;
* ``uncertainty``: minus the ensemble's disagreement — the largest spread of an atom's predicted force over the
  members (eV/Å, the norm of the per-component standard deviation) when forces are computed, else the standard
  deviation of the energy per atom (eV/atom): query by committee;
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
        force_std_max: [G] largest per-atom force disagreement, eV/Å, or None (forces not computed).
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
