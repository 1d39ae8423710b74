"""The steering loop's frozen heap: frozen for the block, handed back after it."""

from __future__ import annotations

import gc
import weakref

from campaign.heap import frozen_heap


class _Cycle:
    def __init__(self) -> None:
        self.me = self  # only the cyclic collector frees it


def test_frozen_for_the_block_and_collected_after() -> None:
    a = _Cycle()
    ref = weakref.ref(a)
    assert gc.get_freeze_count() == 0
    with frozen_heap():
        assert gc.get_freeze_count() > 0
        del a
        gc.collect()
        assert ref() is not None  # what existed before the block is skipped by the block's collections
        b = _Cycle()
        made = weakref.ref(b)
        del b
        gc.collect()
        assert made() is None  # what the block itself made is collected as usual
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert ref() is None  # handed back: collected once garbage


def test_nested_blocks_unfreeze_once() -> None:
    with frozen_heap():
        with frozen_heap():
            pass
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
