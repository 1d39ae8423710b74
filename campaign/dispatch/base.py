"""The dispatcher interface the steering loop uses, and the client-side retry loop shared by the local and
Globus dispatchers (the Parsl dispatcher retries through Parsl's own retry handler)."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from campaign.dispatch.failures import RetryPolicy, result_from_exception
from campaign.tasks import TaskResult, TaskSpec

log = logging.getLogger(__name__)

#: Called with every attempt that failed and is being retried (the final attempt comes through the future).
AttemptCallback = Callable[[TaskResult], None]


class Dispatcher(ABC):
    """Runs :class:`TaskSpec` s somewhere and hands back :class:`TaskResult` s by value.

    ``submit`` returns a future that resolves to the final :class:`TaskResult`; it never raises for task
    failures (they come back as ``exit_cause`` error / walltime / node_lost / killed). Every retried attempt
    is reported through ``on_attempt`` before the retry starts.
    """

    #: Name recorded in ``TaskResult.executor`` when the worker did not set one.
    name: str = "dispatcher"

    def __init__(self, *, policy: RetryPolicy | None = None, on_attempt: AttemptCallback | None = None) -> None:
        self.policy = policy or RetryPolicy()
        self.on_attempt = on_attempt
        self._closed = False

    @abstractmethod
    def submit(self, spec: TaskSpec) -> Future[TaskResult]:
        """Start ``spec``; the future resolves to its final :class:`TaskResult`."""

    @abstractmethod
    def shutdown(self, wait: bool = True) -> None:
        """Stop accepting tasks and release workers, blocks and connections."""

    def _report(self, result: TaskResult) -> None:
        if self.on_attempt is None:
            return
        try:
            self.on_attempt(result)
        except Exception:  # a broken callback must not lose the task
            log.exception("on_attempt callback failed for task %s attempt %s", result.task_id, result.attempt)

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()


@dataclass
class _Try:
    spec: TaskSpec
    out: Future[TaskResult]
    spent: float = 0.0
    free_used: int = 0
    generation: int = 0


class RetryingDispatcher(Dispatcher):
    """A dispatcher whose backend runs one attempt (``_launch``) and which retries on the client side."""

    def __init__(self, *, policy: RetryPolicy | None = None, on_attempt: AttemptCallback | None = None) -> None:
        super().__init__(policy=policy, on_attempt=on_attempt)
        self._lock = threading.Lock()
        self._generation = 0

    @abstractmethod
    def _launch(self, spec: TaskSpec) -> Future[Any]:
        """Start one attempt; the future resolves to a ``TaskResult`` dict or raises."""

    def _backend_lost(self, generation: int, exc: BaseException) -> None:
        """Called when an attempt raised instead of returning (rebuild a broken pool here)."""

    def submit(self, spec: TaskSpec) -> Future[TaskResult]:
        if self._closed:
            raise RuntimeError(f"{self.name} dispatcher is shut down")
        out: Future[TaskResult] = Future()
        out.set_running_or_notify_cancel()
        self._start(_Try(spec, out))
        return out

    def _start(self, t: _Try) -> None:
        t.generation = self._generation
        try:
            fut = self._launch(t.spec)
        except Exception as exc:
            self._finish_attempt(t, None, exc)
            return
        fut.add_done_callback(lambda f: self._on_done(t, f))

    def _on_done(self, t: _Try, fut: Future[Any]) -> None:
        try:
            value = fut.result()
        except BaseException as exc:
            self._finish_attempt(t, None, exc)
        else:
            self._finish_attempt(t, value, None)

    def _finish_attempt(self, t: _Try, value: Any, exc: BaseException | None) -> None:
        try:
            if exc is not None:
                self._backend_lost(t.generation, exc)
                res = result_from_exception(t.spec, exc, executor=self.name)
            else:
                res = TaskResult.model_validate(value)
            if res.executor is None:
                res.executor = self.name
            if res.ok:
                t.out.set_result(res)
                return
            retry, t.spent, t.free_used = self.policy.next_step(res, t.spent, t.free_used)
            if retry and not self._closed:
                self._report(res)
                t.spec = t.spec.model_copy(update={"attempt": t.spec.attempt + 1})
                self._start(t)
            else:
                t.out.set_result(res)
        except BaseException as internal:  # never leave the caller's future pending
            if not t.out.done():
                t.out.set_result(result_from_exception(t.spec, internal, executor=self.name))
