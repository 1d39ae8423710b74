"""Stable structure ids and hash-based train/val/test assignment.

The id hashes the atomic numbers, positions rounded to ``decimals`` Å, the cell and pbc, so the same structure
always gets the same id. Its split depends only on (seed, id): a grown dataset keeps every old structure in its
old split (no permutation of the whole set).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

SPLITS = ("train", "val", "test")
_MASK63 = (1 << 63) - 1


def structure_id(z: np.ndarray, pos: np.ndarray, cell: np.ndarray, pbc: np.ndarray, decimals: int = 4) -> int:
    """Stable non-negative 63-bit id of a structure.

    Args:
        z: [N] atomic numbers.
        pos: [N, 3] positions, Å (rounded to ``decimals`` before hashing).
        cell: [3, 3] cell, Å (rounded likewise).
        pbc: [3] periodic flags.
    """
    h = hashlib.blake2b(digest_size=8)
    h.update(np.ascontiguousarray(z, dtype=np.int64).tobytes())
    # + 0.0 turns -0.0 into 0.0 so that both round to the same bytes
    h.update(np.ascontiguousarray(np.round(pos, decimals) + 0.0, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(np.round(cell, decimals) + 0.0, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(pbc, dtype=np.uint8).tobytes())
    return int.from_bytes(h.digest(), "little") & _MASK63


def split_fraction_point(sid: int, seed: int) -> float:
    """Uniform number in [0, 1) determined by (seed, sid) only."""
    h = hashlib.blake2b(f"{seed}:{sid}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") / 2.0**64


def check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """Validate split fractions (keys within train/val/test, non-negative, sum 1 within 1e-6).

    Raises:
        ValueError: Describing what is wrong.
    """
    extra = set(fractions) - set(SPLITS)
    if extra:
        raise ValueError(f"unknown split(s) {sorted(extra)}; use {SPLITS}")
    out = {s: float(fractions.get(s, 0.0)) for s in SPLITS}
    if any(v < 0 for v in out.values()) or abs(sum(out.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {out}")
    return out


def assign_split(sid: int, seed: int, fractions: Mapping[str, float]) -> str:
    """The split (``train``/``val``/``test``) of structure ``sid`` under ``seed`` and ``fractions``."""
    u = split_fraction_point(sid, seed)
    acc = 0.0
    for name in SPLITS:
        acc += fractions.get(name, 0.0)
        if u < acc:
            return name
    return next(s for s in reversed(SPLITS) if fractions.get(s, 0.0) > 0)
