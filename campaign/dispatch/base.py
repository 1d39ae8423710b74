"""The one dispatcher interface the steering loop uses.

A dispatcher runs one attempt per :meth:`Dispatcher.submit` and hands its :class:`TaskResult` back by value. It
never retries: whether a failed attempt is tried again is the retry policy's decision, taken where the attempt
is recorded (:meth:`campaign.ledger.Ledger.record`), so that every attempt has its row and is charged once.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from concurrent.futures import Future
from types import TracebackType
from typing import Any

from campaign.dispatch.failures import result_from_exception
from campaign.tasks import TaskResult, TaskSpec

log = logging.getLogger(__name__)


class Dispatcher(ABC):
    """Runs :class:`TaskSpec` s somewhere and hands back :class:`TaskResult` s by value.

    ``submit`` returns a future that resolves to the attempt's :class:`TaskResult`; it never raises for task
    failures (they come back as ``exit_cause`` error / walltime / node_lost / killed).
    """

    #: Name recorded in ``TaskResult.executor`` when the worker did not set one.
    name: str = "dispatcher"

    def __init__(self) -> None:
        self._closed = False

    def submit(self, spec: TaskSpec) -> Future[TaskResult]:
        """Start one attempt of ``spec`` (``spec.attempt``); the future resolves to its :class:`TaskResult`."""
        if self._closed:
            raise RuntimeError(f"{self.name} dispatcher is shut down")
        out: Future[TaskResult] = Future()
        out.set_running_or_notify_cancel()
        try:
            backend = self._launch(spec)
        except Exception as exc:
            out.set_result(self._result(spec, None, exc))
            return out
        backend.add_done_callback(lambda f: out.set_result(self._settle(spec, f)))
        return out

    @abstractmethod
    def _launch(self, spec: TaskSpec) -> Future[Any]:
        """Start one attempt; the future resolves to a ``TaskResult`` (its JSON text or dict) or raises."""

    @abstractmethod
    def shutdown(self, wait: bool = True) -> None:
        """Stop accepting tasks and release workers, blocks and connections."""

    def executor_of(self, spec: TaskSpec) -> str:
        """The executor name recorded for an attempt of ``spec`` when its worker reports none."""
        return self.name

    def _backend_lost(self, exc: BaseException) -> None:
        """Called when an attempt raised instead of returning (rebuild a broken pool here)."""
        return None

    def _settle(self, spec: TaskSpec, fut: Future[Any]) -> TaskResult:
        try:
            value = fut.result()
        except BaseException as exc:
            self._backend_lost(exc)
            return self._result(spec, None, exc)
        return self._result(spec, value, None)

    def _result(self, spec: TaskSpec, value: Any, exc: BaseException | None) -> TaskResult:
        try:
            if exc is not None:
                res = result_from_exception(spec, exc, executor=self.executor_of(spec))
            elif isinstance(value, TaskResult):
                res = value
            elif isinstance(value, str | bytes):
                res = TaskResult.model_validate_json(value)
            else:
                res = TaskResult.model_validate(value)
        except Exception as bad:  # a malformed result is the attempt's failure, never the loop's
            log.exception("task %s attempt %s: unreadable result", spec.task_id, spec.attempt)
            res = result_from_exception(spec, bad, executor=self.executor_of(spec))
        if res.executor is None:
            res.executor = self.executor_of(spec)
        return res

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()
