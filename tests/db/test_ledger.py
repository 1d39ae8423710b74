"""The ledger: idempotent tasks, the state machine, attempts with causes, re-queue after a lost driver."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from campaign.dispatch.failures import RetryPolicy
from campaign.lease import DriverBusy, LeaseLost
from campaign.ledger import DRIVER_STOPPED, CampaignConflict, Ledger
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


def _task(ledger: Ledger, key: str = "k", **kw: object) -> tuple[int, int, str]:
    cid = _campaign(ledger)
    st = ledger.stage(cid, "pre", "preprocess")
    t = ledger.create_task(cid, st.id, key, TaskSpec(kind="noop", app="x", workdir=f"/tmp/{key}", **kw))  # type: ignore[arg-type]
    return cid, st.id, t.id


def _attempts(ledger: Ledger, task_id: str) -> list[tuple[int, str | None]]:
    with ledger.Session() as s:
        return [(a.number, a.exit_cause.value if a.exit_cause else None)
                for a in s.scalars(select(m.Attempt).where(m.Attempt.task_id == task_id).order_by(m.Attempt.number))]


def test_attempts_and_retry_accounting(ledger: Ledger) -> None:
    _, _, tid = _task(ledger)
    policy = RetryPolicy(max_retries=1)
    assert ledger.begin_attempt(tid, site="local") == 1
    # walltime is free: back to READY without a charge
    assert ledger.record_attempt(_result(tid, 1, ExitCause.WALLTIME), policy=policy) is TaskState.READY
    assert ledger.begin_attempt(tid, site="local") == 2
    assert ledger.record_attempt(_result(tid, 2, ExitCause.ERROR, error="boom"), policy=policy) is TaskState.READY
    assert ledger.begin_attempt(tid, site="local") == 3
    assert ledger.record_attempt(_result(tid, 3, ExitCause.OK, result={"x": 1}), policy=policy) is TaskState.DONE
    with ledger.Session() as s:
        atts = list(s.scalars(select(m.Attempt).where(m.Attempt.task_id == tid).order_by(m.Attempt.number)))
        task = s.get(m.Task, tid)
    assert [a.exit_cause for a in atts] == [m.ExitCause.WALLTIME, m.ExitCause.ERROR, m.ExitCause.OK]
    assert atts[1].error == "boom" and atts[2].batch_job_id == "42" and atts[2].host == "node1"
    assert task.charged_failures == 1 and task.result == {"x": 1}
    with pytest.raises(InvalidTransition):
        ledger.begin_attempt(tid, site="local")  # DONE is terminal


def test_charged_failures_exhaust_into_failed_and_bad_input_is_never_retried(ledger: Ledger) -> None:
    _, _, tid = _task(ledger)
    states = []
    for n in (1, 2):
        ledger.begin_attempt(tid, site="local")
        states.append(ledger.record_attempt(_result(tid, n, ExitCause.ERROR), policy=RetryPolicy(max_retries=1)))
    assert states == [TaskState.READY, TaskState.FAILED]
    _, _, bad = _task(ledger, "bad")
    ledger.begin_attempt(bad, site="local")
    assert ledger.record_attempt(_result(bad, 1, ExitCause.ERROR, returncode=2)) is TaskState.FAILED


def test_free_retries_run_out_but_a_stopped_driver_costs_nothing(ledger: Ledger) -> None:
    cid, _, tid = _task(ledger)
    policy = RetryPolicy(max_retries=0, max_free_retries=1)
    for _ in range(3):  # three driver restarts while the attempt was in flight: never counted
        ledger.begin_attempt(tid, site="local")
        assert ledger.requeue_lost(cid) == [tid]
    ledger.begin_attempt(tid, site="local")
    assert ledger.record_attempt(_result(tid, 4, ExitCause.NODE_LOST), policy=policy) is TaskState.READY
    ledger.begin_attempt(tid, site="local")
    assert ledger.record_attempt(_result(tid, 5, ExitCause.NODE_LOST), policy=policy) is TaskState.FAILED
    with ledger.Session() as s:
        errors = [a.error for a in s.scalars(select(m.Attempt).where(m.Attempt.task_id == tid)
                                             .order_by(m.Attempt.number))]
        assert errors[:3] == [DRIVER_STOPPED] * 3 and s.get(m.Task, tid).result["reason"] == "node_lost"


def test_a_result_recorded_twice_is_charged_once(ledger: Ledger) -> None:
    """A restarted driver that reads an attempt's result file again must not charge its failure again."""
    _, _, tid = _task(ledger)
    ledger.begin_attempt(tid, site="local")
    failure = _result(tid, 1, ExitCause.ERROR, error="boom")
    assert ledger.record([failure])[0].state is TaskState.READY
    again = ledger.record([failure])[0]
    assert again.stale and again.state is TaskState.READY
    ledger.begin_attempt(tid, site="local")
    assert ledger.record([_result(tid, 2, ExitCause.OK, result={"v": 2})])[0].state is TaskState.DONE
    late = ledger.record([failure, _result(tid, 2, ExitCause.ERROR)])  # both stale now
    assert [r.stale for r in late] == [True, True]
    with ledger.Session() as s:
        task = s.get(m.Task, tid)
        assert task.state == TaskState.DONE and task.charged_failures == 1 and task.result == {"v": 2}
    assert _attempts(ledger, tid) == [(1, "error"), (2, "ok")]


def test_a_stale_attempt_never_records_over_a_newer_one(ledger: Ledger) -> None:
    cid, st, tid = _task(ledger)
    ledger.begin_attempt(tid, site="local")
    ledger.requeue_lost(cid)  # the driver died: attempt 1 closed, the task READY again
    (spec,) = ledger.claim(cid, st, 5, site="local")
    assert spec.attempt == 2
    old = ledger.record([_result(tid, 1, ExitCause.OK, result={"old": True})])[0]
    assert old.stale and old.state is TaskState.SUBMITTED
    assert ledger.record([_result(tid, 2, ExitCause.OK, result={"new": True})])[0].task.result == {"new": True}


def test_requeue_lost_closes_open_attempts(ledger: Ledger) -> None:
    cid, _, tid = _task(ledger)
    ledger.begin_attempt(tid, site="local")
    assert ledger.requeue_lost(cid) == [tid]
    with ledger.Session() as s:
        att = s.scalar(select(m.Attempt).where(m.Attempt.task_id == tid))
        assert att.exit_cause == m.ExitCause.NODE_LOST
        assert s.get(m.Task, tid).state == TaskState.READY


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


def test_create_tasks_in_one_transaction_is_idempotent_and_ordered(ledger: Ledger) -> None:
    cid = _campaign(ledger)
    st = ledger.stage(cid, "pre", "preprocess")
    first = ledger.create_task(cid, st.id, "b", TaskSpec(kind="noop", app="x", workdir="/tmp/b"))
    specs = [(k, TaskSpec(kind="noop", app="x", workdir=f"/tmp/{k}")) for k in ("a", "b", "c", "a")]
    assert ledger.create_tasks(cid, st.id, specs) == 2
    assert ledger.get_task_by_key(cid, "b").id == first.id  # the existing key keeps its task
    assert ledger.count_tasks(cid) == 3 == len(ledger.tasks(cid, states=[TaskState.READY]))
    assert [t.key for t in ledger.tasks(cid, limit=2)] == ["b", "a"]  # oldest first at equal priority
    many = [(f"m/{i:03d}", TaskSpec(kind="noop", app="x", workdir=f"/tmp/m{i}")) for i in range(120)][::-1]
    ledger.create_tasks(cid, st.id, many)  # one batch: the planned order survives, on either backend
    assert [t.key for t in ledger.tasks(cid)][3:] == [k for k, _ in many]


def test_claim_begins_ready_tasks_by_priority_with_their_resources(ledger: Ledger) -> None:
    cid = _campaign(ledger)
    st = ledger.stage(cid, "pre", "preprocess").id
    other = ledger.stage(cid, "hpo", "hpo").id
    res = {"ranks_per_node": 2, "gpus_per_rank": 1}
    ledger.create_tasks(cid, st, [(k, TaskSpec(kind="noop", app="x", workdir=f"/tmp/{k}", priority=p,
                                               resources=res)) for k, p in (("a", 0), ("b", 5), ("c", 0), ("d", 0))])
    ledger.create_task(cid, other, "elsewhere", TaskSpec(kind="noop", app="x", workdir="/tmp/e", priority=9))
    a = ledger.get_task_by_key(cid, "a").id
    ledger.begin_attempt(a, site="local")
    ledger.record_attempt(_result(a, 1, ExitCause.WALLTIME))  # READY again, at attempt 2
    ledger.fail_task(ledger.get_task_by_key(cid, "c").id, "inputs missing")
    specs = ledger.claim(cid, st, 10, site="frontier", executor="parsl")
    assert [(sp.workdir, sp.attempt) for sp in specs] == [("/tmp/b", 1), ("/tmp/a", 2), ("/tmp/d", 1)]
    assert ledger.claim(cid, st, 10, site="frontier") == []
    with ledger.Session() as s:
        att = s.scalar(select(m.Attempt).where(m.Attempt.task_id == specs[0].task_id))
        assert (att.site, att.executor, att.ranks, att.gpus, att.exit_cause) == ("frontier", "parsl", 2, 2, None)
        assert s.get(m.Task, a).spec["attempt"] == 1 and s.get(m.Task, a).state == TaskState.SUBMITTED  # as planned
    assert sorted((sp.task_id, sp.attempt) for sp in ledger.open_attempts(cid, st)) == sorted(
        (sp.task_id, sp.attempt) for sp in specs)
    bare = TaskResult(task_id=specs[2].task_id, attempt=1, exit_cause=ExitCause.NODE_LOST, error="lost")
    ledger.record([bare])  # a result that reports no executor nor start keeps the submission's
    with ledger.Session() as s:
        att = s.scalar(select(m.Attempt).where(m.Attempt.task_id == specs[2].task_id))
        assert att.executor == "parsl" and att.started_at == att.submitted_at and att.ended_at is not None
    ledger.record([_result(specs[0].task_id, 1, ExitCause.OK)])  # times reported by the worker
    with ledger.Session() as s:
        att = s.scalar(select(m.Attempt).where(m.Attempt.task_id == specs[0].task_id))
        assert (att.ended_at - att.started_at).total_seconds() >= 0  # stored alike: both naive, or both aware
        assert (att.ended_at - att.submitted_at).total_seconds() > -60


def test_record_in_order_in_one_transaction(ledger: Ledger) -> None:
    cid = _campaign(ledger)
    st = ledger.stage(cid, "pre", "preprocess").id
    ledger.create_tasks(cid, st, [(k, TaskSpec(kind="noop", app="x", workdir=f"/tmp/{k}")) for k in "ab"])
    a, b = (sp.task_id for sp in ledger.claim(cid, st, 2, site="local"))
    recorded = ledger.record([_result(a, 1, ExitCause.OK, result={"v": 1}), _result(b, 1, ExitCause.ERROR)],
                             policy=RetryPolicy(max_retries=1))
    assert [r.state for r in recorded] == [TaskState.DONE, TaskState.READY]
    assert recorded[0].task.result == {"v": 1} and recorded[0].task.key == "a"
    # one unknown task rolls the whole batch back
    ledger.begin_attempt(b, site="local")
    with pytest.raises(KeyError):
        ledger.record([_result(b, 2, ExitCause.OK), _result("missing", 1, ExitCause.OK)])
    with ledger.Session() as s:
        assert s.get(m.Task, b).state == TaskState.SUBMITTED
    assert _attempts(ledger, b) == [(1, "error"), (2, None)]


def test_one_driver_holds_the_lease_and_a_fenced_driver_writes_nothing(ledger: Ledger) -> None:
    import os

    from campaign.lease import this_driver

    cid, st, tid = _task(ledger)
    me = this_driver(None)
    elsewhere = me.model_copy(update={"host": "elsewhere", "pid": 1, "token": "e" * 32})
    ledger.acquire_lease(cid, me)
    with pytest.raises(DriverBusy, match=f"pid {os.getpid()} on "):
        ledger.acquire_lease(cid, elsewhere)
    ledger.release_lease(cid, me.token)
    # a holder on this host whose process is gone (another start time) is provably dead: its lease is taken over
    ledger.acquire_lease(cid, me.model_copy(update={"start_ticks": -1}))
    ledger.acquire_lease(cid, elsewhere)
    with pytest.raises(LeaseLost):
        ledger.record([_result(tid, 1, ExitCause.OK)], campaign_id=cid, token=me.token)
    with pytest.raises(LeaseLost):
        ledger.claim(cid, st, 1, site="local", driver=me)
    assert ledger.tasks(cid)[0].state is TaskState.READY and _attempts(ledger, tid) == []
    (spec,) = ledger.claim(cid, st, 1, site="local", driver=elsewhere)
    assert spec.driver == elsewhere
