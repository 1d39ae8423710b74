"""Many processes writing through the campaign ledger at once: nothing lost, no "database is locked".

Each process runs ``ROUNDS`` rounds of four ledger writes (create a task, begin its attempt, record its
outcome, add a metric row), i.e. ``4 * ROUNDS`` committed transactions, on SQLite (WAL) and PostgreSQL.
"""

from __future__ import annotations

import multiprocessing
import traceback

import pytest
from sqlalchemy import func, select

from campaign.dispatch.failures import RetryPolicy
from campaign.ledger import Ledger
from campaign.tasks import ExitCause, TaskResult, TaskSpec, TaskState, utcnow
from db import models as m
from db.engine import make_engine
from db.migrate import ensure_schema


def _writer(url: str, campaign_id: int, stage_id: int, proc: int, rounds: int) -> str | None:
    """One writer process: returns None, or the traceback of whatever reached it."""
    try:
        engine = make_engine(url)
        ledger = Ledger(engine)
        for i in range(rounds):
            spec = TaskSpec(kind="noop", app="campaign.apps.noop", config={"p": proc, "i": i},
                            workdir=f"/tmp/w/{proc}/{i}")
            task = ledger.create_task(campaign_id, stage_id, f"p{proc}/t{i}", spec)
            n = ledger.begin_attempt(task.id, site="local", executor="test")
            ledger.record_attempt(TaskResult(task_id=task.id, attempt=n, exit_cause=ExitCause.OK,
                                             result={"p": proc, "i": i}, started_at=utcnow(), ended_at=utcnow()), policy=RetryPolicy(0, 0))
            ledger.add_metrics(task.id, [{"epoch": i, "head": "h", "split": "val", "name": "loss", "value": i}])
        engine.dispose()
        return None
    except BaseException:
        return traceback.format_exc()


def _hammer(url: str, procs: int, rounds: int) -> None:
    engine = make_engine(url)
    ensure_schema(engine)
    ledger = Ledger(engine)
    cid = ledger.open_campaign(name="conc", recipe_text="campaign: conc", recipe_hash="h", site="local").id
    sid = ledger.stage(cid, "noop", "noop").id
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(procs) as pool:
        errors = pool.starmap(_writer, [(url, cid, sid, p, rounds) for p in range(procs)])
    assert [e for e in errors if e] == [], "\n".join(e for e in errors if e)
    with ledger.Session() as s:
        assert s.scalar(select(func.count()).select_from(m.Task)) == procs * rounds
        assert s.scalar(select(func.count()).select_from(m.Task).where(m.Task.state == TaskState.DONE)) == \
            procs * rounds
        assert s.scalar(select(func.count()).select_from(m.Attempt).where(m.Attempt.exit_cause == m.ExitCause.OK)) \
            == procs * rounds
        assert s.scalar(select(func.count()).select_from(m.Metric)) == procs * rounds
        keys = set(s.scalars(select(m.Task.key)))
    assert keys == {f"p{p}/t{i}" for p in range(procs) for i in range(rounds)}
    engine.dispose()


def test_four_writers_small(db_url: str) -> None:
    """4 processes x 40 writes (the default tier; the 8 x 1,000 run is slow)."""
    _hammer(db_url, 4, 10)


@pytest.mark.slow
def test_eight_writers_thousand_writes_each(db_url: str) -> None:
    """8 processes x 1,000 writes (250 rounds of 4 transactions)."""
    _hammer(db_url, 8, 250)
