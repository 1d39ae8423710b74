"""Outlier filters. Every rejected structure is counted under its reason, never dropped silently."""

from __future__ import annotations

import math

import numpy as np

from models.contracts.preprocess import Filters
from models.data.structure import Structure

REASONS = ("unlabelled", "nonfinite", "max_force", "min_distance", "duplicate")


def label_reason(s: Structure) -> str | None:
    """Reason to reject ``s`` from its labels alone (``unlabelled``, ``nonfinite``, ``max_force``), or None."""
    if s.energy is None:
        return "unlabelled"
    if not math.isfinite(s.energy):
        return "nonfinite"
    if s.forces is not None and not np.isfinite(s.forces).all():
        return "nonfinite"
    if s.stress is not None and not np.isfinite(s.stress).all():
        return "nonfinite"
    return None


def force_reason(s: Structure, cfg: Filters) -> str | None:
    """``max_force`` when any atom's force norm exceeds the threshold, else None."""
    if cfg.max_force is not None and s.forces is not None:
        if float(np.max((s.forces * s.forces).sum(axis=1), initial=0.0)) > cfg.max_force**2:
            return "max_force"
    return None


def distance_reason(dist: np.ndarray, cfg: Filters) -> str | None:
    """``min_distance`` when the shortest neighbour distance (Å) is below the threshold, else None."""
    if cfg.min_distance is not None and dist.size and float(dist.min()) < cfg.min_distance:
        return "min_distance"
    return None
