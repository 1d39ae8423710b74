"""Failure classification and the retry policy."""

from __future__ import annotations

import math
from concurrent.futures.process import BrokenProcessPool

from parsl.executors.errors import BadStateException
from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost

from campaign.dispatch.failures import RetryPolicy, classify, result_from_exception
from campaign.tasks import ExitCause, TaskResult, TaskSpec


def test_classify_parsl_and_pool_exceptions() -> None:
    assert classify(WorkerLost(3, "nid0001")) is ExitCause.NODE_LOST
    assert classify(ManagerLost(b"abc", "nid0002")) is ExitCause.NODE_LOST
    assert classify(BrokenProcessPool("gone")) is ExitCause.NODE_LOST
    assert classify(BadStateException(None, RuntimeError("block died"))) is ExitCause.WALLTIME  # type: ignore[arg-type]
    assert classify(KeyboardInterrupt()) is ExitCause.KILLED
    assert classify(ValueError("app")) is ExitCause.ERROR


def test_result_from_lost_manager_names_host() -> None:
    spec = TaskSpec(kind="noop", app="campaign.apps.noop", workdir="/tmp/x")
    res = result_from_exception(spec, ManagerLost(b"m1", "nid0042"), attempt=2, executor="parsl:htex")
    assert (res.exit_cause, res.host, res.attempt, res.executor) == (ExitCause.NODE_LOST, "nid0042", 2, "parsl:htex")


def _res(cause: ExitCause, rc: int | None = None) -> TaskResult:
    return TaskResult(task_id="t", exit_cause=cause, returncode=rc)


def test_policy_costs() -> None:
    p = RetryPolicy(max_retries=2, max_free_retries=2)
    assert p.cost(_res(ExitCause.NODE_LOST), 0) == 0 and p.cost(_res(ExitCause.WALLTIME), 1) == 0
    assert p.cost(_res(ExitCause.NODE_LOST), 2) == 1  # past the free limit
    assert p.cost(_res(ExitCause.ERROR, 1), 0) == 1 and p.cost(_res(ExitCause.KILLED), 0) == 1
    assert math.isinf(p.cost(_res(ExitCause.ERROR, 2), 0))  # bad input is never retried
