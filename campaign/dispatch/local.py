"""The laptop default: a pool of worker processes running :func:`campaign.worker.run_task`, no Parsl.

Light apps (``campaign.apps.*`` declaring ``IN_PROCESS``) run inside the pool's processes; real apps are
started as ``python -m <app>`` by the worker. A worker process that dies (``BrokenProcessPool``) is a lost
node: the pool is rebuilt and the task retried at no cost.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from campaign.dispatch.base import AttemptCallback, RetryingDispatcher
from campaign.dispatch.failures import RetryPolicy
from campaign.tasks import TaskSpec
from campaign.worker import run_task


class LocalDispatcher(RetryingDispatcher):
    """Run tasks in a local process pool.

    Args:
        max_workers: Worker processes (default: ``os.cpu_count()``).
        policy: Retry policy.
        on_attempt: Called with every retried attempt.
        in_process: Passed to :func:`campaign.worker.run_task` (``None``: light apps in-process).
    """

    name = "local"

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        policy: RetryPolicy | None = None,
        on_attempt: AttemptCallback | None = None,
        in_process: bool | None = None,
    ) -> None:
        super().__init__(policy=policy, on_attempt=on_attempt)
        self.max_workers = max_workers or os.cpu_count() or 1
        self.in_process = in_process
        self._ctx = multiprocessing.get_context("forkserver")
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.max_workers, mp_context=self._ctx)

    def _launch(self, spec: TaskSpec) -> Future[Any]:
        return self._pool.submit(run_task, spec.model_dump(mode="json"), None, in_process=self.in_process)

    def _backend_lost(self, generation: int, exc: BaseException) -> None:
        if type(exc).__name__ != "BrokenProcessPool":
            return
        with self._lock:
            if generation == self._generation and not self._closed:
                old = self._pool
                self._pool = self._new_pool()
                self._generation += 1
                old.shutdown(wait=False, cancel_futures=True)

    def shutdown(self, wait: bool = True) -> None:
        self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
