"""The ledger: idempotent tasks, the state machine, attempts with causes, re-queue after a lost driver."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from campaign.ledger import CampaignConflict, Ledger
from campaign.tasks import ExitCause, InvalidTransition, TaskResult, TaskSpec, TaskState, utcnow
from db import models as m


@pytest.fixture
def ledger(engine):  # type: ignore[no-untyped-def]
    return Ledger(engine)


def _campaign(ledger: Ledger, name: str = "c", h: str = "h1") -> int:
    return ledger.open_campaign(name=name, recipe_text="campaign: c", recipe_hash=h, site="local").id


def _result(task_id: str, attempt: int, cause: ExitCause, **kw: object) -> TaskResult:
    return TaskResult(task_id=task_id, attempt=attempt, exit_cause=cause, host="node1", batch_job_id="42",
                      started_at=utcnow(), ended_at=utcnow(), **kw)


def test_reopening_same_recipe_resumes_and_other_recipe_conflicts(ledger: Ledger) -> None:
    cid = _campaign(ledger)
    assert _campaign(ledger) == cid
    with pytest.raises(CampaignConflict, match="different recipe"):
        _campaign(ledger, h="h2")


def test_task_keys_are_idempotent(ledger: Ledger) -> None:
    cid = _campaign(ledger)
    st = ledger.stage(cid, "hpo", "hpo")
    a = ledger.create_task(cid, st.id, "trial/painn/0", TaskSpec(kind="trial", app="x", workdir="/tmp/x"))
    b = ledger.create_task(cid, st.id, "trial/painn/0", TaskSpec(kind="trial", app="x", workdir="/tmp/x"))
    assert a.id == b.id
    assert len(ledger.tasks(cid)) == 1


def test_attempts_and_retry_accounting(ledger: Ledger) -> None:
    cid = _campaign(ledger)
    st = ledger.stage(cid, "pre", "preprocess")
    t = ledger.create_task(cid, st.id, "k", TaskSpec(kind="noop", app="x", workdir="/tmp/x"))
    assert ledger.begin_attempt(t.id, site="local") == 1
    # walltime is free: back to READY without a charge
    assert ledger.record_attempt(_result(t.id, 1, ExitCause.WALLTIME), final=True, requeue=True, max_charged=1) is TaskState.READY
    assert ledger.begin_attempt(t.id, site="local") == 2
    assert ledger.record_attempt(_result(t.id, 2, ExitCause.ERROR, error="boom"), final=True, requeue=True,
                                 max_charged=1) is TaskState.READY
    assert ledger.begin_attempt(t.id, site="local") == 3
    assert ledger.record_attempt(_result(t.id, 3, ExitCause.OK, result={"x": 1}), final=True) is TaskState.DONE
    with ledger.Session() as s:
        atts = list(s.scalars(select(m.Attempt).where(m.Attempt.task_id == t.id).order_by(m.Attempt.number)))
        task = s.get(m.Task, t.id)
    assert [a.exit_cause for a in atts] == [m.ExitCause.WALLTIME, m.ExitCause.ERROR, m.ExitCause.OK]
    assert atts[1].error == "boom" and atts[2].batch_job_id == "42" and atts[2].host == "node1"
    assert task.charged_failures == 1 and task.result == {"x": 1}
    with pytest.raises(InvalidTransition):
        ledger.begin_attempt(t.id, site="local")  # DONE is terminal


def test_charged_failures_exhaust_into_failed(ledger: Ledger) -> None:
    cid = _campaign(ledger)
    st = ledger.stage(cid, "pre", "preprocess")
    t = ledger.create_task(cid, st.id, "k", TaskSpec(kind="noop", app="x", workdir="/tmp/x"))
    for n in (1, 2):
        ledger.begin_attempt(t.id, site="local")
        state = ledger.record_attempt(_result(t.id, n, ExitCause.ERROR), final=True, requeue=True, max_charged=1)
    assert state is TaskState.FAILED


def test_without_requeue_a_final_failure_fails(ledger: Ledger) -> None:
    cid = _campaign(ledger)
    st = ledger.stage(cid, "pre", "preprocess")
    t = ledger.create_task(cid, st.id, "k", TaskSpec(kind="noop", app="x", workdir="/tmp/x"))
    ledger.begin_attempt(t.id, site="local")
    assert ledger.record_attempt(_result(t.id, 1, ExitCause.WALLTIME), final=False) is TaskState.SUBMITTED
    assert ledger.record_attempt(_result(t.id, 2, ExitCause.NODE_LOST), final=True) is TaskState.FAILED
    with ledger.Session() as s:
        assert [a.number for a in s.scalars(select(m.Attempt).where(m.Attempt.task_id == t.id))] == [1, 2]
        assert s.get(m.Task, t.id).result["reason"] == "node_lost"


def test_requeue_lost_closes_open_attempts(ledger: Ledger) -> None:
    cid = _campaign(ledger)
    st = ledger.stage(cid, "pre", "preprocess")
    t = ledger.create_task(cid, st.id, "k", TaskSpec(kind="noop", app="x", workdir="/tmp/x"))
    ledger.begin_attempt(t.id, site="local")
    assert ledger.requeue_lost(cid) == [t.id]
    with ledger.Session() as s:
        att = s.scalar(select(m.Attempt).where(m.Attempt.task_id == t.id))
        assert att.exit_cause == m.ExitCause.NODE_LOST
        assert s.get(m.Task, t.id).state == TaskState.READY


def test_lineage_and_artifacts_are_idempotent(ledger: Ledger, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cid = _campaign(ledger)
    f = tmp_path / "ckpt.pt"
    f.write_bytes(b"weights")
    a1 = ledger.add_artifact(f, "checkpoint")
    a2 = ledger.add_artifact(f, "checkpoint")
    assert a1.id == a2.id and a1.bytes == 7 and len(a1.sha256) == 64
    ledger.link("output_of", ("artifact", a1.id), ("task", "t1"), cid)
    ledger.link("output_of", ("artifact", a1.id), ("task", "t1"), cid)
    with ledger.Session() as s:
        assert len(list(s.scalars(select(m.Lineage)))) == 1
