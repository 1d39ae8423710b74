"""Keep the steering process's long-lived objects out of the cyclic garbage collector's passes.

The steering loop allocates a few dicts and rows per task; every 700 net allocations CPython runs a young-generation
collection and, as survivors pile up, a full one that traverses every tracked object in the process: imported
modules, the ORM's mappers, Parsl's DataFlowKernel and its task records. Measured here, one full pass over the
~110,000 objects of a steering process took about 100 ms, once per ~1,000 no-op tasks: a quarter of the loop's own
cost per task. :func:`frozen_heap` moves what exists when a stage starts into the permanent generation
(``gc.freeze``), so that collections during the stage traverse only what the stage itself made, and hands it back
(``gc.unfreeze``) when the stage ends, so that whatever of it became cyclic garbage meanwhile is still collected.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze the objects that exist now for the duration of the block (see the module docstring).

    Nested use is safe: only the outermost block unfreezes.
    """
    outermost = gc.get_freeze_count() == 0
    gc.freeze()
    try:
        yield
    finally:
        if outermost:
            gc.unfreeze()
