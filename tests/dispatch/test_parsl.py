"""The Parsl dispatcher: one attempt per submit (Parsl never retries), HTEX on loopback."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from campaign.dispatch import make_dispatcher
from campaign.dispatch.parsl_dispatch import ParslDispatcher
from campaign.tasks import ExitCause


@pytest.fixture(scope="module")
def threads(tmp_path_factory):  # type: ignore[no-untyped-def]
    run_dir = tmp_path_factory.mktemp("threads")
    with make_dispatcher("threads", {"max_workers": 2}, run_dir) as d:
        yield d


def test_threads_results_by_value(threads, make_spec) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(threads, ParslDispatcher)
    futs = [threads.submit(make_spec(payload=i)) for i in range(5)]
    res = [f.result(timeout=60) for f in futs]
    assert [r.result["payload"] for r in res] == list(range(5))
    assert all(r.ok for r in res)


def test_a_failed_attempt_comes_back_as_its_result_and_parsl_never_retries(threads, make_spec) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec(fail="error", fail_attempts=2)
    res = threads.submit(spec).result(timeout=60)
    assert res.exit_cause is ExitCause.ERROR and res.attempt == 1 and "asked" in res.error
    assert (Path(spec.workdir) / "noop_runs.txt").read_text() == "1"
    assert threads.dfk.config.retries == 0


def test_bad_input(threads, make_spec) -> None:  # type: ignore[no-untyped-def]
    res = threads.submit(make_spec(fail="bad_input")).result(timeout=60)
    assert res.returncode == 2 and res.attempt == 1


def test_htex_loopback_end_to_end(tmp_path: Path, make_spec, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # an environment that was never activated: the dispatcher must put its bin/ on PATH for interchange.py
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    params = {"engine": "parsl", "max_workers": 2, "heartbeat_period": 1, "heartbeat_threshold": 3}
    with make_dispatcher("local", params, tmp_path) as d:
        assert os.environ["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
        ok = d.submit(make_spec(payload="hi"))
        sub = d.submit(make_spec(payload="sub", resources={"walltime_s": 60}))  # python -m on the worker
        crash = make_spec(fail="crash", fail_attempts=1)  # kills the HTEX worker process: WorkerLost
        lost = d.submit(crash)
        assert ok.result(timeout=60).result["payload"] == "hi"
        r = sub.result(timeout=60)
        assert r.ok and r.result["payload"] == "sub" and r.executor == "parsl:htex"
        r = lost.result(timeout=90)
        assert r.exit_cause is ExitCause.NODE_LOST and r.attempt == 1 and r.task_id == crash.task_id
        assert d.submit(make_spec(payload="after")).result(timeout=60).ok
    assert (tmp_path / "parsl").is_dir()


@pytest.mark.parametrize(("level", "debug_records"), [(None, False), ("debug", True)])
def test_parsl_log_level(tmp_path: Path, make_spec, level: str | None, debug_records: bool) -> None:  # type: ignore[no-untyped-def]
    """parsl.log is written at INFO unless the site asks for Parsl's own default (DEBUG): the per-task records it
    drops are the ones the campaign database holds anyway."""
    params: dict[str, object] = {"max_workers": 1} | ({"parsl_log_level": level} if level else {})
    with make_dispatcher("threads", params, tmp_path) as d:
        assert d.submit(make_spec(payload=1)).result(timeout=60).ok
    (log,) = (tmp_path / "parsl").glob("*/parsl.log")
    text = log.read_text()
    assert " INFO: " in text
    assert (" DEBUG: " in text) is debug_records


def test_parsl_log_level_must_be_known(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="parsl_log_level"):
        make_dispatcher("threads", {"parsl_log_level": "chatty"}, tmp_path)
