"""Why an attempt failed, what a retry costs, and the TaskResult of a failure that raised.

Exceptions are classified by type name so that this module imports neither Parsl nor Globus Compute (the
local dispatcher needs it too): Parsl's ``WorkerLost``/``ManagerLost`` are lost nodes, ``BadStateException``
and ``AppTimeout`` walltime, ``BrokenProcessPool`` (the local pool) a lost node, anything else an app error.
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass
from typing import Any

from campaign.tasks import ExitCause, TaskResult, TaskSpec, utcnow
from campaign.worker import BAD_INPUT_EXIT

_NODE_LOST = frozenset({"WorkerLost", "ManagerLost", "BrokenProcessPool", "WorkerLostError"})
_WALLTIME = frozenset({"BadStateException", "AppTimeout", "ScalingFailed", "TimeoutError"})
_KILLED = frozenset({"KeyboardInterrupt", "SystemExit", "CancelledError"})

#: Causes retried without charge (up to :attr:`RetryPolicy.max_free_retries`).
FREE_CAUSES = frozenset({ExitCause.WALLTIME, ExitCause.NODE_LOST})


def classify(exc: BaseException) -> ExitCause:
    """The :class:`ExitCause` of an exception raised instead of a result."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & _NODE_LOST:
        return ExitCause.NODE_LOST
    if names & _WALLTIME:
        return ExitCause.WALLTIME
    if names & _KILLED:
        return ExitCause.KILLED
    code = getattr(exc, "exitcode", None)
    if isinstance(code, int) and code < 0 and -code in signal.valid_signals():
        return ExitCause.KILLED
    return ExitCause.ERROR


def result_from_exception(
    spec: TaskSpec, exc: BaseException, *, attempt: int | None = None, executor: str | None = None
) -> TaskResult:
    """The :class:`TaskResult` of an attempt that raised ``exc`` rather than returning a result."""
    now = utcnow()
    return TaskResult(
        task_id=spec.task_id,
        attempt=attempt or spec.attempt,
        exit_cause=classify(exc),
        error=f"{type(exc).__name__}: {exc}"[-4000:],
        host=getattr(exc, "hostname", None),
        executor=executor,
        started_at=now,
        ended_at=now,
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How many times a task is tried again.

    Attributes:
        max_retries: Budget of charged retries: app errors and kills cost 1 each.
        max_free_retries: Lost nodes and walltime are retried at cost 0 this many times per task; beyond that
            they cost 1 like an error.
    """

    max_retries: int = 2
    max_free_retries: int = 3

    def cost(self, result: TaskResult | dict[str, Any], free_used: int) -> float:
        """Cost of retrying after ``result`` when ``free_used`` free retries were already spent.

        Bad input (exit status 2) is never retried: its cost exceeds any budget.
        """
        res = result if isinstance(result, TaskResult) else TaskResult.model_validate(result)
        if res.exit_cause in FREE_CAUSES and free_used < self.max_free_retries:
            return 0.0
        if res.exit_cause is ExitCause.ERROR and res.returncode == BAD_INPUT_EXIT:
            return math.inf
        return 1.0
