"""db.bulk: driver-level executemany writes the same values SQLAlchemy's own execution would, on both backends."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from campaign.ledger import Ledger
from campaign.tasks import ExitCause, TaskState, utcnow
from db import models as m
from db.bulk import insert_rows, update_rows
from db.engine import json_loads


@pytest.fixture
def session(engine):  # type: ignore[no-untyped-def]
    ledger = Ledger(engine)
    cid = ledger.open_campaign(name="c", recipe_text="campaign: c", recipe_hash="h", site="local").id
    sid = ledger.stage(cid, "pre", "preprocess").id
    with Session(engine) as s:
        s.info["ids"] = (cid, sid)
        yield s


def _task_rows(cid: int, sid: int, prefix: str, n: int, now: datetime | None = None) -> list[dict[str, object]]:
    now = now or utcnow()
    return [dict(id=f"{prefix}{k:030d}", campaign_id=cid, stage_id=sid, key=f"{prefix}/{k}", kind="noop", app="x",
                 spec={"k": k, "nested": {"a": [1, 2.5, None]}, "text": "é ✓"}, state=TaskState.READY,
                 priority=k % 3, result=None if k % 2 else {"ok": True}, charged_failures=0,
                 created_at=now + timedelta(microseconds=k), updated_at=now) for k in range(n)]


def _read(s: Session, prefix: str) -> list[tuple[object, ...]]:
    s.expire_all()
    rows = s.scalars(select(m.Task).where(m.Task.id.like(f"{prefix}%")).order_by(m.Task.id))
    return [(t.key, t.spec, t.state, t.priority, t.result, t.created_at, t.updated_at) for t in rows]


def test_insert_rows_reads_back_like_sqlalchemy_insert(session: Session) -> None:
    cid, sid = session.info["ids"]
    now = utcnow()
    insert_rows(session, m.Task.__table__, _task_rows(cid, sid, "a", 5, now))
    session.execute(insert(m.Task.__table__), _task_rows(cid, sid, "b", 5, now))
    session.commit()
    ours, theirs = _read(session, "a"), _read(session, "b")
    assert len(ours) == 5
    assert [r[1:] for r in ours] == [r[1:] for r in theirs]
    assert ours[0][2] is TaskState.READY and ours[0][1]["text"] == "é ✓"


def test_update_rows_sets_only_given_columns_and_fills_onupdate(session: Session) -> None:
    cid, sid = session.info["ids"]
    insert_rows(session, m.Task.__table__, _task_rows(cid, sid, "u", 3))
    session.commit()
    before = _read(session, "u")
    update_rows(session, m.Task.__table__, [dict(id=f"u{k:030d}", state=TaskState.DONE, result={"e": k})
                                            for k in range(2)])
    session.commit()
    after = _read(session, "u")
    assert [r[2] for r in after] == [TaskState.DONE, TaskState.DONE, TaskState.READY]
    assert [r[4] for r in after[:2]] == [{"e": 0}, {"e": 1}]
    assert [r[1] for r in after] == [r[1] for r in before]  # untouched columns stay
    assert after[0][6] > before[0][6] and after[2][6] == before[2][6]  # updated_at: onupdate filled


def test_insert_rows_fills_python_defaults_and_autoincrements(session: Session) -> None:
    cid, sid = session.info["ids"]
    insert_rows(session, m.Task.__table__, _task_rows(cid, sid, "d", 1))
    insert_rows(session, m.Attempt.__table__, [dict(task_id=f"d{0:030d}", number=n, site="local", executor=None,
                                                    exit_cause=ExitCause.OK if n == 1 else None)
                                               for n in (1, 2)])
    session.commit()
    atts = list(session.scalars(select(m.Attempt).order_by(m.Attempt.number)))
    assert [(a.nodes, a.ranks, a.gpus, a.cpus) for a in atts] == [(1, 1, 0, 1)] * 2  # column defaults
    assert atts[0].exit_cause is m.ExitCause.OK and atts[1].exit_cause is None
    assert atts[0].submitted_at is not None and atts[1].id == atts[0].id + 1


def test_rolls_back_with_the_session(session: Session) -> None:
    cid, sid = session.info["ids"]
    insert_rows(session, m.Task.__table__, _task_rows(cid, sid, "r", 2))
    session.rollback()
    assert _read(session, "r") == []


def test_json_loads_accepts_what_json_dumps_writes_for_non_finite_numbers() -> None:
    assert json_loads('{"a": [1, 2.5, null]}') == {"a": [1, 2.5, None]}
    out = json_loads('{"loss": NaN, "best": Infinity}')
    assert isinstance(out, dict) and math.isnan(out["loss"]) and out["best"] == math.inf


def test_update_rows_by_compound_key_with_fallbacks(session: Session) -> None:
    """Rows picked by (task_id, number); a ``None`` for a fallback column keeps the row's own or another
    column's value, any other value is set."""
    cid, sid = session.info["ids"]
    insert_rows(session, m.Task.__table__, _task_rows(cid, sid, "k", 1))
    tid = f"k{0:030d}"
    sub = utcnow()
    insert_rows(session, m.Attempt.__table__, [dict(task_id=tid, number=n, site="local", executor="parsl",
                                                    submitted_at=sub + timedelta(seconds=n)) for n in (1, 2, 3)])
    session.commit()
    start = sub + timedelta(minutes=5)
    update_rows(session, m.Attempt.__table__,
                [dict(task_id=tid, number=1, executor=None, started_at=None, host="n1"),
                 dict(task_id=tid, number=2, executor="parsl:htex", started_at=start, host="n2")],
                key=("task_id", "number"), fallback={"executor": "executor", "started_at": "submitted_at"})
    session.commit()
    session.expire_all()
    atts = list(session.scalars(select(m.Attempt).order_by(m.Attempt.number)))
    assert [(a.executor, a.host) for a in atts] == [("parsl", "n1"), ("parsl:htex", "n2"), ("parsl", None)]
    assert atts[0].started_at == atts[0].submitted_at and atts[2].started_at is None
    assert atts[1].started_at - atts[1].submitted_at == timedelta(minutes=5, seconds=-2)  # start, not submission
