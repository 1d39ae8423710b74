"""The deduplication id set: a set's behaviour at a fraction of a Python set's memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from models.data.id_set import IdSet


def test_behaves_as_a_set_across_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(IdSet, "MIN_RECENT", 8)  # many merges in a small test
    rng = np.random.default_rng(0)
    ids, reference = IdSet(), set()
    for sid in [*rng.integers(0, 300, size=3000).tolist(), 0, 2**63 - 1]:
        assert (sid in ids) == (sid in reference)
        assert ids.add(sid) == (sid not in reference)  # True only for a new id
        reference.add(sid)
        assert len(ids) == len(reference)
    assert all(s in ids for s in reference) and not any(s in ids for s in range(300, 400))
    assert ids._sorted.size > 0 and np.all(np.diff(ids._sorted) > 0)  # merged, sorted, no duplicate


def test_memory_per_id_is_a_fraction_of_a_python_set() -> None:
    n = 400_000
    sids = np.random.default_rng(1).integers(0, 2**63 - 1, size=n, dtype=np.int64).tolist()
    tracemalloc.start()
    ids = IdSet()
    for s in sids:
        ids.add(s)
    ours = tracemalloc.get_traced_memory()[0]
    reference = set(sids)
    both = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(ids) == len(reference) == n
    assert ours / n < 24, f"{ours / n:.1f} bytes an id"
    assert (both - ours) / n > 2 * ours / n  # the Python set of the same ids (ints shared with `sids`)
