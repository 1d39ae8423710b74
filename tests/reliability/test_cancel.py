"""`campaign cancel`: a running campaign stopped from another process, its attempts stopped with it, nothing
done lost, and `campaign resume` finishing it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from campaign.cli.app import app
from campaign.processes import process_alive
from db.readonly import run_readonly
from tests.reliability.conftest import TINY_RECIPE, TINY_TASKS
from tests.reliability.driver_kill import attempt_count, check_invariants
from tests.reliability.test_fencing import AppSampler, _campaign, _descendants, _wait_for

runner = CliRunner()


def test_the_driver_sees_a_cancel_request_within_seconds(engine: object) -> None:
    """The mechanism, in one process: a request is written only while a live driver holds the campaign, the
    driver's loop raises CampaignCancelled at its next look, and a driver taking the campaign clears it."""
    from campaign.lease import CampaignCancelled, this_driver
    from campaign.ledger import Ledger
    from campaign.taskqueue import TaskQueue

    ledger = Ledger(engine)  # type: ignore[arg-type]
    row = ledger.open_campaign(name="c", recipe_text="campaign: c\n", recipe_hash="h" * 64, site="local")
    assert ledger.request_cancel("c").driver is None  # nobody runs it: nothing to cancel
    assert not ledger.cancel_requested(row.id)
    driver = this_driver(None)
    ledger.acquire_lease(row.id, driver)
    queue = TaskQueue(ledger, row.id, site="local", driver=driver)
    queue.keep_alive()  # no request: nothing happens
    req = ledger.request_cancel("c")
    assert req.driver is not None and req.driver.pid == os.getpid()
    queue._cancel_checked = 0.0  # the next look is due
    with pytest.raises(CampaignCancelled):
        queue.keep_alive()
    ledger.release_lease(row.id, driver.token)
    ledger.acquire_lease(row.id, this_driver(None))  # a later run or resume
    assert not ledger.cancel_requested(row.id)


def test_cancel_of_an_unknown_or_idle_campaign(world: tuple[Path, str]) -> None:
    _root, url = world
    res = runner.invoke(app, ["cancel", "nope", "--db", url])
    assert res.exit_code == 2 and "no campaign named 'nope'" in res.output
    name = run_readonly("SELECT name FROM campaigns LIMIT 1", url=url).rows[0][0]
    res = runner.invoke(app, ["cancel", name, "--db", url])
    assert res.exit_code == 0 and "is not running" in res.output and "nothing to cancel" in res.output


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cancel_a_running_campaign_then_resume_it(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.format(name="tiny"))
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with AppSampler(tmp_path) as sampler:
        first = _campaign(["run", str(recipe)], tmp_path, url)
        _wait_for(lambda: attempt_count(url, "tiny") >= 2 and len(sampler.seen) >= 1)
        left = _descendants(first.pid)
        t0 = time.monotonic()
        res = runner.invoke(app, ["cancel", "tiny", "--db", url, "--timeout", "60"])
        took = time.monotonic() - t0
        assert res.exit_code == 0, res.output
        assert "cancelled" in res.output and "campaign resume tiny" in res.output
        assert first.wait(timeout=30) == 1  # the run ended, not done
        time.sleep(1.0)  # the pool's workers notice their driver is gone within 0.5 s
        alive = [pid for pid, ticks in left.items() if process_alive(pid, ticks)]
        assert alive == [], f"processes of the cancelled run still alive: {alive}"
        assert run_readonly("SELECT status, driver_token FROM campaigns", url=url).rows == [("cancelled", None)]
        done_before = run_readonly("SELECT COUNT(*) FROM tasks WHERE state = 'DONE'", url=url).rows[0][0]
        assert done_before < TINY_TASKS
        resumed = _campaign(["resume", "tiny"], tmp_path, url)
        assert resumed.wait(timeout=400) == 0
    assert took < 20, f"cancel took {took:.1f} s"
    assert sampler.overlaps == [], sampler.overlaps
    assert check_invariants(url, "tiny") == []
    assert run_readonly("SELECT status, cancel_requested_at FROM campaigns", url=url).rows == [("done", None)]
    if first.returncode is None:  # pragma: no cover - cleanup on failure
        os.killpg(first.pid, signal.SIGKILL)
