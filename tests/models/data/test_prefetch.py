"""Batches built ahead by a background thread: the same batches in the same order as built on demand, the
loader's position counted at the caller (an interrupted pass resumes exactly), a failure raised in its item's
place, and no thread left behind when the caller stops early."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from models.data.loader import MultiDatasetLoader
from models.data.prefetch import Prefetched
from models.data.store import GraphStore
from tests.models.data.test_loader import _store


def _prefetch_threads() -> int:
    return sum(t.name == "prefetch" for t in threading.enumerate())


def test_items_in_order_errors_at_their_place_and_no_thread_left() -> None:
    assert list(Prefetched(range(50), depth=3)) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise ValueError("item 3 is broken")

    got = []
    with pytest.raises(ValueError, match="item 3 is broken"):
        for x in Prefetched(failing()):
            got.append(x)
    assert got == [1, 2]
    it = iter(Prefetched(iter(range(10_000)), depth=2))
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()  # the caller stops early: the thread ends, what it built ahead is dropped
    assert _prefetch_threads() == 0


def test_loader_batches_and_resume_are_those_built_on_demand(tmp_path: Path) -> None:
    stores = [_store(tmp_path, "big", 0, 60), _store(tmp_path, "small", 1, 10)]
    files = [GraphStore(s.path, cache=False) for s in stores]  # read from the files, as data_in_memory: none

    def epoch(loader: MultiDatasetLoader) -> list[list[int]]:
        loader.set_epoch(3)
        return [b.sid.tolist() for b in loader]

    on_demand = epoch(MultiDatasetLoader(stores, 8, seed=7, sampling="uniform", epoch_size=96, prefetch=0))
    ahead = MultiDatasetLoader(files, 8, seed=7, sampling="uniform", epoch_size=96, prefetch=3)
    assert epoch(ahead) == on_demand
    ahead.set_epoch(3)
    it = iter(ahead)
    first = [next(it).sid.tolist() for _ in range(4)]
    state = ahead.state_dict()  # three batches are built ahead by now; four were received
    it.close()
    assert state["position"] == 4 and _prefetch_threads() == 0
    resumed = MultiDatasetLoader(files, 8, seed=7, sampling="uniform", epoch_size=96, prefetch=3)
    resumed.load_state_dict(state)
    assert first + epoch(resumed) == on_demand

