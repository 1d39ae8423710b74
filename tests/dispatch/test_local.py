"""The local process-pool dispatcher: one attempt per submit, results by value, lost workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from campaign.dispatch import make_dispatcher
from campaign.dispatch.local import LocalDispatcher
from campaign.tasks import ExitCause


@pytest.fixture(scope="module")
def local():  # type: ignore[no-untyped-def]
    with LocalDispatcher(2) as d:
        yield d


def test_results_by_value(local, make_spec) -> None:  # type: ignore[no-untyped-def]
    futs = [local.submit(make_spec(payload=i)) for i in range(8)]
    results = [f.result(timeout=60) for f in futs]
    assert [r.result["payload"] for r in results] == list(range(8))
    assert all(r.ok and r.attempt == 1 and r.host for r in results)


def test_one_attempt_per_submit_never_retried(local, make_spec) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec(fail="error", fail_attempts=1)
    res = local.submit(spec).result(timeout=60)
    assert res.exit_cause is ExitCause.ERROR and res.attempt == 1 and "asked" in res.error
    again = local.submit(spec.model_copy(update={"attempt": 2})).result(timeout=60)
    assert again.ok and again.attempt == 2 and again.result["run"] == 2


def test_bad_input(local, make_spec) -> None:  # type: ignore[no-untyped-def]
    res = local.submit(make_spec(sleep_s=-1)).result(timeout=60)
    assert res.exit_cause is ExitCause.ERROR and res.returncode == 2 and res.attempt == 1


def test_lost_worker_is_node_lost_and_the_pool_is_rebuilt(local, make_spec) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec(fail="crash", fail_attempts=1)  # in-process os._exit: the pool loses a worker
    res = local.submit(spec).result(timeout=60)
    assert res.exit_cause is ExitCause.NODE_LOST and res.attempt == 1
    assert local.submit(make_spec()).result(timeout=60).ok  # the pool was rebuilt


def test_make_dispatcher_local(tmp_path: Path, make_spec) -> None:  # type: ignore[no-untyped-def]
    with make_dispatcher("local", {"max_workers": 1, "retries": 0}, tmp_path) as d:
        assert isinstance(d, LocalDispatcher)
        res = d.submit(make_spec(fail="error")).result(timeout=60)
        assert res.attempt == 1 and res.exit_cause is ExitCause.ERROR
    with pytest.raises(TypeError, match="partition"):
        make_dispatcher("local", {"partition": "x"}, tmp_path)
