"""Build the next items of an iterator in a background thread while the caller works on the current one.

The training loader reads a batch from the stores (ADIOS2 reads, numpy gathers: the GIL is released for most of
it) while the model computes the step before; the caller sees the items in order, exceptions included.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_ITEM, _END, _ERROR = 0, 1, 2


class Prefetched(Generic[T]):
    """Iterate ``items`` with up to ``depth`` of them built ahead by one daemon thread.

    :meth:`close` (also on leaving a ``with`` block, or when the iteration ends) stops the thread and drops what
    it built ahead; the caller decides what was consumed. An exception raised while building an item is raised
    to the caller in that item's place.
    """

    def __init__(self, items: Iterable[T], depth: int = 2) -> None:
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self._queue: queue.Queue[tuple[int, object]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(iter(items),), name="prefetch", daemon=True)
        self._thread.start()

    def _put(self, kind: int, value: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put((kind, value), timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                if not self._put(_ITEM, item):
                    return
        except BaseException as exc:  # handed to the caller, raised there
            self._put(_ERROR, exc)
            return
        self._put(_END, None)

    def __iter__(self) -> Iterator[T]:
        try:
            while True:
                kind, value = self._queue.get()
                if kind == _END:
                    return
                if kind == _ERROR:
                    assert isinstance(value, BaseException)
                    raise value
                yield value  # type: ignore[misc]
        finally:
            self.close()

    def close(self) -> None:
        """Stop building items and wait for the thread (it finishes the item it is building)."""
        self._stop.set()
        while True:  # unblock a put in progress
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    def __enter__(self) -> Prefetched[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
