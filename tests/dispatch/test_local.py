"""The local process-pool dispatcher: results by value, retries, lost workers, every attempt reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from campaign.dispatch import make_dispatcher
from campaign.dispatch.local import LocalDispatcher
from campaign.tasks import ExitCause, TaskResult


@pytest.fixture(scope="module")
def attempts() -> list[TaskResult]:
    return []


@pytest.fixture(scope="module")
def local(attempts: list[TaskResult]):  # type: ignore[no-untyped-def]
    with LocalDispatcher(2, on_attempt=attempts.append) as d:
        yield d


def test_results_by_value(local, make_spec) -> None:  # type: ignore[no-untyped-def]
    futs = [local.submit(make_spec(payload=i)) for i in range(8)]
    results = [f.result(timeout=60) for f in futs]
    assert [r.result["payload"] for r in results] == list(range(8))
    assert all(r.ok and r.attempt == 1 and r.host for r in results)


def test_error_retried_and_reported(local, attempts, make_spec) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec(fail="error", fail_attempts=1)
    res = local.submit(spec).result(timeout=60)
    assert res.ok and res.attempt == 2
    mine = [a for a in attempts if a.task_id == spec.task_id]
    assert [(a.attempt, a.exit_cause) for a in mine] == [(1, ExitCause.ERROR)]


def test_error_budget_exhausted(local, attempts, make_spec) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec(fail="error")
    res = local.submit(spec).result(timeout=60)
    assert res.exit_cause is ExitCause.ERROR and res.attempt == 3  # 1 + 2 charged retries
    assert [a.attempt for a in attempts if a.task_id == spec.task_id] == [1, 2]


def test_bad_input_not_retried(local, attempts, make_spec) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec(sleep_s=-1)
    res = local.submit(spec).result(timeout=60)
    assert res.exit_cause is ExitCause.ERROR and res.returncode == 2 and res.attempt == 1
    assert not [a for a in attempts if a.task_id == spec.task_id]


def test_lost_worker_retried_free(local, attempts, make_spec) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec(fail="crash", fail_attempts=1)  # in-process os._exit: the pool loses a worker
    res = local.submit(spec).result(timeout=60)
    assert res.ok and res.attempt == 2
    lost = [a for a in attempts if a.task_id == spec.task_id]
    assert [a.exit_cause for a in lost] == [ExitCause.NODE_LOST]
    assert local.submit(make_spec()).result(timeout=60).ok  # the pool was rebuilt


def test_make_dispatcher_local(tmp_path: Path, make_spec) -> None:  # type: ignore[no-untyped-def]
    with make_dispatcher("local", {"max_workers": 1, "retries": 0}, tmp_path) as d:
        assert isinstance(d, LocalDispatcher)
        res = d.submit(make_spec(fail="error")).result(timeout=60)
        assert res.attempt == 1 and res.exit_cause is ExitCause.ERROR
    with pytest.raises(TypeError, match="partition"):
        make_dispatcher("local", {"partition": "x"}, tmp_path)
