"""The laptop default: a pool of worker processes running :func:`campaign.worker.run_task`, no Parsl.

Light apps (``campaign.apps.*`` declaring ``IN_PROCESS``) run inside the pool's processes; real apps are
started as ``python -m <app>`` by the worker. A worker process that dies (``BrokenProcessPool``) is a lost
node: the pool is rebuilt and the attempt comes back as ``node_lost``. Every worker process watches the
steering process that made it and exits, stopping its app, as soon as that process is gone
(:func:`campaign.worker.watch_driver`): a killed driver leaves no worker behind to start its queued tasks.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from campaign.dispatch.base import Dispatcher
from campaign.processes import process_start_ticks
from campaign.tasks import TaskSpec
from campaign.worker import run_task, watch_driver


class LocalDispatcher(Dispatcher):
    """Run tasks in a local process pool.

    Args:
        max_workers: Worker processes (default: ``os.cpu_count()``).
        in_process: Passed to :func:`campaign.worker.run_task` (``None``: light apps in-process).
    """

    name = "local"

    def __init__(self, max_workers: int | None = None, *, in_process: bool | None = None) -> None:
        super().__init__()
        self.max_workers = max_workers or os.cpu_count() or 1
        self.in_process = in_process
        self._ctx = multiprocessing.get_context("forkserver")
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        me = os.getpid()
        return ProcessPoolExecutor(max_workers=self.max_workers, mp_context=self._ctx, initializer=watch_driver,
                                   initargs=(me, process_start_ticks(me)))

    def _launch(self, spec: TaskSpec) -> Future[Any]:
        return self._pool.submit(run_task, spec.model_dump(mode="json"), None, in_process=self.in_process)

    def _backend_lost(self, exc: BaseException) -> None:
        if type(exc).__name__ != "BrokenProcessPool":
            return
        with self._lock:
            if getattr(self._pool, "_broken", True) and not self._closed:  # rebuilt once, by the first that saw it
                old, self._pool = self._pool, self._new_pool()
                old.shutdown(wait=False, cancel_futures=True)

    def shutdown(self, wait: bool = True) -> None:
        self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
