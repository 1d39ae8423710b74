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


def test_create_tasks_in_one_transaction_is_idempotent_and_ordered(ledger: Ledger) -> None:
    cid = _campaign(ledger)
    st = ledger.stage(cid, "pre", "preprocess")
    first = ledger.create_task(cid, st.id, "b", TaskSpec(kind="noop", app="x", workdir="/tmp/b"))
    specs = [(k, TaskSpec(kind="noop", app="x", workdir=f"/tmp/{k}")) for k in ("a", "b", "c", "a")]
    rows = ledger.create_tasks(cid, st.id, specs)
    assert [r.key for r in rows] == ["a", "b", "c"]
    assert rows[1].id == first.id  # the existing key keeps its task
    assert ledger.count_tasks(cid) == 3 == len(ledger.tasks(cid, states=[TaskState.READY]))
    assert [t.key for t in ledger.tasks(cid, limit=2)] == ["b", "a"]  # oldest first at equal priority
    many = [(f"m/{i:03d}", TaskSpec(kind="noop", app="x", workdir=f"/tmp/m{i}")) for i in range(120)][::-1]
    ledger.create_tasks(cid, st.id, many)  # one batch: the planned order survives, on either backend
    assert [t.key for t in ledger.tasks(cid)][3:] == [k for k, _ in many]


def test_begin_attempts_skips_tasks_no_longer_ready(ledger: Ledger) -> None:
    cid = _campaign(ledger)
    st = ledger.stage(cid, "pre", "preprocess")
    a, b, c = ledger.create_tasks(cid, st.id, [(k, TaskSpec(kind="noop", app="x", workdir=f"/tmp/{k}",
                                                            resources={"ranks_per_node": 2, "gpus_per_rank": 1}))
                                               for k in "abc"])
    assert ledger.begin_attempt(a.id, site="local") == 1
    ledger.record_attempt(_result(a.id, 1, ExitCause.WALLTIME), final=True, requeue=True)  # READY again
    ledger.fail_task(c.id, "inputs missing")
    assert ledger.begin_attempts([a.id, b.id, c.id, "nope"], site="frontier", executor="parsl") == {a.id: 2, b.id: 1}
    with ledger.Session() as s:
        att = s.scalar(select(m.Attempt).where(m.Attempt.task_id == b.id))
        assert (att.site, att.executor, att.ranks, att.gpus, att.exit_cause) == ("frontier", "parsl", 2, 2, None)
        assert s.get(m.Task, a.id).spec["attempt"] == 2 and s.get(m.Task, b.id).state == TaskState.SUBMITTED
        assert s.get(m.Task, c.id).state == TaskState.FAILED


def test_record_attempts_in_order_in_one_transaction(ledger: Ledger) -> None:
    cid = _campaign(ledger)
    st = ledger.stage(cid, "pre", "preprocess")
    a, b = ledger.create_tasks(cid, st.id, [(k, TaskSpec(kind="noop", app="x", workdir=f"/tmp/{k}")) for k in "ab"])
    assert ledger.begin_attempts([a.id, b.id], site="local") == {a.id: 1, b.id: 1}
    from campaign.ledger import AttemptOutcome

    recorded = ledger.record_attempts([
        AttemptOutcome(_result(a.id, 1, ExitCause.ERROR, error="first try"), final=False),  # retried by Parsl
        AttemptOutcome(_result(a.id, 2, ExitCause.OK, result={"v": 2})),
        AttemptOutcome(_result(b.id, 1, ExitCause.ERROR), requeue=True, final=True),
    ], max_charged=1)
    assert [r.state for r in recorded] == [TaskState.SUBMITTED, TaskState.DONE, TaskState.READY]
    assert recorded[1].task.result == {"v": 2} and recorded[1].task.key == "a"
    with ledger.Session() as s:
        atts = [(x.number, x.exit_cause.value, x.site, x.batch_job_id)
                for x in s.scalars(select(m.Attempt).where(m.Attempt.task_id == a.id).order_by(m.Attempt.number))]
        assert atts == [(1, "error", "local", "42"), (2, "ok", "local", "42")]  # the retry inherits the site
        assert s.get(m.Task, a.id).charged_failures == 1
    # one unknown task rolls the whole batch back
    ledger.begin_attempt(b.id, site="local")
    with pytest.raises(KeyError):
        ledger.record_attempts([AttemptOutcome(_result(b.id, 2, ExitCause.OK)),
                                AttemptOutcome(_result("missing", 1, ExitCause.OK))])
    with ledger.Session() as s:
        assert s.get(m.Task, b.id).state == TaskState.SUBMITTED
        assert s.scalar(select(m.Attempt).where(m.Attempt.task_id == b.id, m.Attempt.number == 2)).exit_cause is None


def test_create_and_begin_writes_what_create_then_begin_would(ledger: Ledger) -> None:
    """New tasks begun in the transaction that creates them: the same rows as create_tasks + begin_attempts;
    the rest READY, an existing key left as it is, nothing created or begun twice."""
    cid = _campaign(ledger)
    st = ledger.stage(cid, "pre", "preprocess")
    old = ledger.create_task(cid, st.id, "b", TaskSpec(kind="noop", app="x", workdir="/tmp/b"))
    planned = [(k, TaskSpec(kind="noop", app="x", workdir=f"/tmp/{k}", priority=3,
                            resources={"ranks_per_node": 2, "gpus_per_rank": 1})) for k in ("a", "b", "c", "d")]
    made = ledger.create_and_begin(cid, st.id, planned, begin=2, site="frontier", executor="parsl")
    assert [r.key for r in made.begun] == ["a", "c"] and [r.key for r in made.ready] == ["d"] and made.existing == 1
    assert all(r.state is TaskState.SUBMITTED and r.spec["attempt"] == 1 and r.priority == 3 for r in made.begun)
    with ledger.Session() as s:
        atts = list(s.scalars(select(m.Attempt).order_by(m.Attempt.id)))
        assert [(a.task_id, a.number, a.site, a.executor, a.ranks, a.gpus, a.exit_cause) for a in atts] == [
            (made.begun[0].id, 1, "frontier", "parsl", 2, 2, None), (made.begun[1].id, 1, "frontier", "parsl", 2, 2, None)]
        assert s.get(m.Task, old.id).state == TaskState.READY and s.get(m.Task, old.id).spec["workdir"] == "/tmp/b"
        stored = {t.key: t for t in s.scalars(select(m.Task))}
    assert stored["a"].spec == made.begun[0].spec and stored["a"].state == TaskState.SUBMITTED
    assert stored["d"].state == TaskState.READY and stored["d"].result is None and made.ready[0].state is TaskState.READY
    assert stored["d"].spec == made.ready[0].spec and stored["d"].id == made.ready[0].id
    assert [t.key for t in ledger.tasks(cid, states=[TaskState.READY])] == ["d", "b"]  # priority, then age
    again = ledger.create_and_begin(cid, st.id, planned, begin=4, site="frontier")
    assert (again.begun, again.ready, again.existing) == ([], [], 4)
    assert ledger.count_tasks(cid) == 4


def test_recording_attempts_the_caller_began_keeps_submission_values(ledger: Ledger) -> None:
    """With ``open_attempts`` the attempt rows are not read back: a result without an executor or a start time
    keeps the attempt's executor and starts at its submission, as when they are read."""
    from campaign.ledger import AttemptOutcome

    cid = _campaign(ledger)
    st = ledger.stage(cid, "pre", "preprocess")
    planned = [(k, TaskSpec(kind="noop", app="x", workdir=f"/tmp/{k}")) for k in "abc"]
    made = ledger.create_and_begin(cid, st.id, planned, begin=3, site="local", executor="parsl")
    a, b, c = made.begun
    bare = TaskResult(task_id=b.id, attempt=1, exit_cause=ExitCause.NODE_LOST, error="lost")  # nothing reported
    recorded = ledger.record_attempts(
        [AttemptOutcome(_result(a.id, 1, ExitCause.OK, result={"v": 1}, executor="parsl:htex")),
         AttemptOutcome(bare, requeue=True), AttemptOutcome(_result(c.id, 1, ExitCause.OK))],
        rows={r.id: r for r in made.begun}, open_attempts={(r.id, 1) for r in made.begun})
    assert [r.state for r in recorded] == [TaskState.DONE, TaskState.READY, TaskState.DONE]
    with ledger.Session() as s:
        atts = {x.task_id: x for x in s.scalars(select(m.Attempt))}
        assert atts[a.id].executor == "parsl:htex" and atts[a.id].exit_cause is m.ExitCause.OK
        assert atts[b.id].executor == "parsl" and atts[b.id].started_at == atts[b.id].submitted_at
        assert atts[b.id].ended_at is not None and atts[b.id].error == "lost"
        assert s.get(m.Task, a.id).result == {"v": 1} and s.get(m.Task, b.id).state == TaskState.READY
    # an outcome of an attempt the caller did not begin (a dispatcher's retry) still gets its own row
    ledger.begin_attempt(b.id, site="local")
    ledger.record_attempts([AttemptOutcome(_result(b.id, 2, ExitCause.ERROR), final=False),
                            AttemptOutcome(_result(b.id, 3, ExitCause.OK))], open_attempts={(b.id, 2)})
    with ledger.Session() as s:
        numbers = sorted((x.number, x.exit_cause.value, x.site) for x in s.scalars(select(m.Attempt)
                                                                                 .where(m.Attempt.task_id == b.id)))
    assert numbers == [(1, "node_lost", "local"), (2, "error", "local"), (3, "ok", "local")]


def test_task_row_with_state_is_replace_of_state_and_charged_failures() -> None:
    """The hand-written copy the recording path uses matches ``dataclasses.replace`` field for field (it builds
    the row positionally: a field added or reordered in TaskRow must show up here)."""
    from dataclasses import fields, replace

    from campaign.ledger import TaskRow

    now = utcnow()
    row = TaskRow(**{f.name: f"v-{f.name}" for f in fields(TaskRow)} | {"created_at": now, "updated_at": now})
    copy = row.with_state(TaskState.DONE, 3)
    assert copy == replace(row, state=TaskState.DONE, charged_failures=3) and copy is not row
    assert [getattr(copy, f.name) for f in fields(TaskRow) if f.name not in ("state", "charged_failures")] == [
        getattr(row, f.name) for f in fields(TaskRow) if f.name not in ("state", "charged_failures")]
