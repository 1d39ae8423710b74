"""A set of structure ids (non-negative 63-bit integers) in ~17 bytes an id, for deduplication at scale."""

from __future__ import annotations

import numpy as np


class IdSet:
    """The ids a preprocessing run has kept, to drop later duplicates: ``sid in ids``, ``ids.add(sid)``.

    A Python ``set`` of ints takes ~70 bytes an id (the int object and its hash-table slot): 7 GB for the 10⁸
    structures of one large dataset in one worker. Here the ids live in one sorted int64 array (8 bytes an id)
    plus a Python set of the ids added since the last merge; that set is merged into the array when it reaches
    an eighth of the array's size (at least :attr:`MIN_RECENT` ids), so it adds at most ~9 bytes an id on
    average, and the merges (a linear merge of two sorted runs) cost O(N log N) in all. A lookup is one set
    probe and one binary search (~1 µs).
    """

    #: Fewest recent ids that trigger a merge.
    MIN_RECENT = 1 << 16

    def __init__(self) -> None:
        self._sorted = np.zeros(0, dtype=np.int64)
        self._recent: set[int] = set()

    def __len__(self) -> int:
        return int(self._sorted.size) + len(self._recent)

    def __contains__(self, sid: int) -> bool:
        if sid in self._recent:
            return True
        i = int(self._sorted.searchsorted(sid))
        return i < self._sorted.size and int(self._sorted[i]) == sid

    def add(self, sid: int) -> bool:
        """Add ``sid``; whether it was new (one lookup for "seen before?" and "remember it")."""
        if sid in self:
            return False
        self._recent.add(sid)
        if len(self._recent) >= max(self.MIN_RECENT, self._sorted.size // 8):
            recent = np.fromiter(self._recent, dtype=np.int64, count=len(self._recent))
            recent.sort()
            merged = np.concatenate([self._sorted, recent])
            merged.sort(kind="stable")  # timsort: two sorted runs, merged in one linear pass
            self._sorted, self._recent = merged, set()
        return True
