"""Outlier filters. Every rejected structure is counted under its reason, never dropped silently."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.data.structure import Structure

REASONS = ("unlabelled", "nonfinite", "max_force", "min_distance", "duplicate")


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds.

    Attributes:
        max_force: Reject structures with any |F| above this, eV/Å (``None`` disables).
        min_distance: Reject structures with two atoms closer than this, Å (``None`` disables). Must be below
            the graph cutoff (the check uses the neighbour list).
        deduplicate: Reject a structure whose id was already seen in this dataset.
    """

    max_force: float | None = 50.0
    min_distance: float | None = 0.5
    deduplicate: bool = True


def label_reason(s: Structure) -> str | None:
    """Reason to reject ``s`` from its labels alone (``unlabelled``, ``nonfinite``, ``max_force``), or None."""
    if s.energy is None:
        return "unlabelled"
    if not np.isfinite(s.energy):
        return "nonfinite"
    if s.forces is not None and not np.isfinite(s.forces).all():
        return "nonfinite"
    if s.stress is not None and not np.isfinite(s.stress).all():
        return "nonfinite"
    return None


def force_reason(s: Structure, cfg: FilterConfig) -> str | None:
    """``max_force`` when any atom's force norm exceeds the threshold, else None."""
    if cfg.max_force is not None and s.forces is not None:
        if float(np.max(np.linalg.norm(s.forces, axis=1), initial=0.0)) > cfg.max_force:
            return "max_force"
    return None


def distance_reason(dist: np.ndarray, cfg: FilterConfig) -> str | None:
    """``min_distance`` when the shortest neighbour distance (Å) is below the threshold, else None."""
    if cfg.min_distance is not None and dist.size and float(dist.min()) < cfg.min_distance:
        return "min_distance"
    return None
