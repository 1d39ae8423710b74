"""The steering loop over a real local dispatcher: attempts, retries and failures land in the database."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from campaign.dispatch import make_dispatcher
from campaign.ledger import Ledger
from campaign.recipe import parse_recipe
from campaign.stages.base import PlannedTask, StageContext
from campaign.steer import Steerer, _InFlight, _Launched
from campaign.tasks import TaskResult, TaskSpec, TaskState
from db import models as m


class NoopStage:
    """Three tasks: one succeeds, one fails once then succeeds, one always fails; a follow-up after the first."""

    name = "noop"
    kind = "noop"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.seen: list[str] = []

    def _task(self, key: str, **cfg: Any) -> PlannedTask:
        return PlannedTask(key, TaskSpec(kind="noop", app="campaign.apps.noop", config=cfg,
                                         workdir=str(self.workdir / key)))

    def start(self, ctx: StageContext) -> list[PlannedTask]:
        return [self._task("ok", payload=1), self._task("flaky", fail="error", fail_attempts=1),
                self._task("broken", fail="error")]

    def on_done(self, ctx: StageContext, task: Any, result: TaskResult) -> list[PlannedTask]:
        self.seen.append(task.key)
        return [self._task("follow-up", payload=2)] if task.key == "ok" else []

    def on_failed(self, ctx: StageContext, task: Any, result: TaskResult | None) -> list[PlannedTask]:
        self.seen.append("failed:" + task.key)
        return []

    def finish(self, ctx: StageContext) -> str:
        return "done"


def test_steering_records_every_attempt(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ledger = Ledger(engine)
    cid = ledger.open_campaign(name="s", recipe_text="campaign: s", recipe_hash="h", site="local").id
    stage_row = ledger.stage(cid, "noop", "noop")
    recipe = parse_recipe("campaign: s\n")
    ctx = StageContext(recipe=recipe, ledger=ledger, campaign_id=cid, stage_id=stage_row.id, workdir=tmp_path,
                       site="local")
    dispatcher = make_dispatcher("local", {"max_workers": 2, "retries": 1}, tmp_path / "dispatch")
    stage = NoopStage(tmp_path)
    try:
        steer = Steerer(ledger, dispatcher, cid, "local", max_in_flight=2)
        dispatcher.on_attempt = steer.report_attempt
        assert steer.run_stage(stage, ctx) == "done"
    finally:
        dispatcher.shutdown()
    assert sorted(stage.seen) == ["failed:broken", "flaky", "follow-up", "ok"]
    with ledger.Session() as s:
        tasks = {t.key: t for t in s.scalars(select(m.Task))}
        attempts = {k: [(a.number, a.exit_cause.value) for a in t.attempts] for k, t in tasks.items()}
    assert tasks["ok"].state == TaskState.DONE and tasks["ok"].result["payload"] == 1
    assert attempts["ok"] == [(1, "ok")]
    assert attempts["flaky"] == [(1, "error"), (2, "ok")]
    assert attempts["broken"] == [(1, "error"), (2, "error")]
    assert tasks["broken"].state == TaskState.FAILED
    assert tasks["follow-up"].state == TaskState.DONE


@pytest.mark.slow
def test_preprocess_stage_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from campaign.runner import run_campaign

    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "campaign: e2e\nsite: {name: local, workers: 2}\n"
        "datasets:\n  - {name: demo-emt, count: 12, shards: 2}\n  - {name: demo-gfn2, count: 6}\n"
        "stages:\n  preprocess: {cutoff: 4.5, max_neighbours: 12}\n")
    url = f"sqlite:///{tmp_path / 'c.db'}"
    out = run_campaign(recipe, db=url)
    assert out.ok and [s.status for s in out.stages] == ["done"]
    again = run_campaign(recipe, db=url)  # a re-run resumes: nothing runs twice
    assert again.ok
    from campaign import api

    assert api.query("SELECT COUNT(*) FROM attempts", db=url).rows == [(5,)]
    ds = api.query("SELECT name, head_id FROM datasets ORDER BY name", db=url).rows
    assert ds == [("demo-emt", 100), ("demo-gfn2", 101)]
    for (path, sha) in api.query("SELECT path, sha256 FROM artifacts", db=url).rows:
        from models.atomic_files import sha256_file

        assert sha256_file(path) == sha


class ManyStage:
    """``n`` no-op tasks; checks that every result it is told is already committed; plans one follow-up and
    creates one task straight through the ledger without returning it (the loop must still run it)."""

    name = "many"
    kind = "noop"

    def __init__(self, workdir: Path, n: int) -> None:
        self.workdir = workdir
        self.n = n
        self.told: list[str] = []

    def _task(self, key: str, **cfg: Any) -> PlannedTask:
        return PlannedTask(key, TaskSpec(kind="noop", app="campaign.apps.noop", config=cfg,
                                         workdir=str(self.workdir / key.replace("/", "_"))))

    def start(self, ctx: StageContext) -> list[PlannedTask]:
        return [self._task(f"n/{i}", payload=i) for i in range(self.n)]

    def on_done(self, ctx: StageContext, task: Any, result: TaskResult) -> list[PlannedTask]:
        with ctx.ledger.Session() as s:  # a fresh session sees the committed result
            row = s.get(m.Task, task.id)
            att = s.scalar(select(m.Attempt).where(m.Attempt.task_id == task.id,
                                                   m.Attempt.number == result.attempt))
            assert row.state == TaskState.DONE and row.result == result.result
            assert att is not None and att.exit_cause == m.ExitCause.OK
        self.told.append(task.key)
        if task.key == "n/0":
            return [self._task("follow-up", payload="f")]
        if task.key == "n/1":
            p = self._task("direct", payload="d")
            ctx.ledger.create_task(ctx.campaign_id, ctx.stage_id, p.key, p.spec)
        return []

    def on_failed(self, ctx: StageContext, task: Any, result: TaskResult | None) -> list[PlannedTask]:
        raise AssertionError(f"{task.key} failed")

    def finish(self, ctx: StageContext) -> str:
        return "done"


def _many_stage_context(engine: Any, tmp_path: Path, campaign: str) -> tuple[Ledger, int, StageContext]:
    """A campaign with one stage "many" in ``engine``: its ledger, campaign id and stage context."""
    ledger = Ledger(engine)
    cid = ledger.open_campaign(name=campaign, recipe_text=f"campaign: {campaign}", recipe_hash="h", site="local").id
    stage_row = ledger.stage(cid, "many", "noop")
    ctx = StageContext(recipe=parse_recipe(f"campaign: {campaign}\n"), ledger=ledger, campaign_id=cid,
                       stage_id=stage_row.id, workdir=tmp_path, site="local")
    return ledger, cid, ctx


def test_steering_batches_ledger_writes_and_records_before_telling(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import event

    ledger, cid, ctx = _many_stage_context(engine, tmp_path, "many")
    n = 120
    commits: list[int] = []
    event.listen(engine, "commit", lambda conn: commits.append(1))
    progress: list[tuple[int, int]] = []
    dispatcher = make_dispatcher("local", {"max_workers": 2, "retries": 0}, tmp_path / "dispatch")
    stage = ManyStage(tmp_path, n)
    try:
        steer = Steerer(ledger, dispatcher, cid, "local", max_in_flight=n,
                        on_progress=lambda p: progress.append((p.done, p.running)))
        dispatcher.on_attempt = steer.report_attempt
        assert steer.run_stage(stage, ctx) == "done"
    finally:
        dispatcher.shutdown()
    assert sorted(stage.told) == sorted([f"n/{i}" for i in range(n)] + ["follow-up", "direct"])
    assert ledger.count_tasks(cid, states=[TaskState.DONE]) == n + 2
    with ledger.Session() as s:
        assert s.scalar(select(m.Attempt.id).where(m.Attempt.exit_cause.is_(None))) is None
        assert len(list(s.scalars(select(m.Attempt)))) == n + 2
    # one transaction per task created, begun and recorded would be 3 (n + 2); batches need far fewer
    assert len(commits) < 1.5 * n, len(commits)
    assert progress[-1] == (n + 2, 0)  # the last report of the stage always comes


def test_in_flight_lingers_to_gather_a_burst_of_results() -> None:
    """With linger, results finishing shortly after the first come back together (one transaction); once
    everything in flight has finished it returns at once instead of waiting out the linger."""
    flight = _InFlight()
    futs: list[Future[int]] = [Future() for _ in range(3)]
    for k, f in enumerate(futs):
        flight.add(f, _Launched(f"t{k}", 1))
    futs[0].set_result(0)
    threading.Timer(0.05, futs[1].set_result, args=(1,)).start()
    got = flight.next_finished(timeout=1.0, linger_s=0.5)
    assert got[0] is futs[0]
    assert futs[1] in got  # gathered during the linger
    for f in got:
        flight.pop(f)
    t0 = time.monotonic()
    futs[2].set_result(2)
    assert flight.next_finished(timeout=1.0, linger_s=5.0) == [futs[2]]  # nothing else in flight: no waiting
    assert time.monotonic() - t0 < 1.0
    assert flight.next_finished(timeout=0.01) == []


def test_in_flight_stops_lingering_before_the_workers_run_dry() -> None:
    """With keep_busy = the site's concurrency, lingering ends once only that many attempts are left unfinished."""
    flight = _InFlight()
    futs: list[Future[int]] = [Future() for _ in range(4)]
    for k, f in enumerate(futs):
        flight.add(f, _Launched(f"t{k}", 1))
    futs[0].set_result(0)
    threading.Timer(0.05, futs[1].set_result, args=(1,)).start()
    t0 = time.monotonic()
    got = flight.next_finished(timeout=1.0, linger_s=5.0, keep_busy=2)  # 4 in flight, 2 workers
    assert got == [futs[0], futs[1]] and time.monotonic() - t0 < 2.0


class _Recording:
    """A real local dispatcher that notes, per submission, the task and how many tasks the stage then held."""

    def __init__(self, inner: Any, ledger: Ledger, cid: int) -> None:
        self.inner, self.ledger, self.cid = inner, ledger, cid
        self.name = inner.name
        self.submitted: list[tuple[str, int]] = []

    def submit(self, spec: TaskSpec) -> Future[Any]:
        self.submitted.append((spec.config["payload"], self.ledger.count_tasks(self.cid)))
        return self.inner.submit(spec)

    def shutdown(self) -> None:
        self.inner.shutdown()


def test_start_tasks_created_in_chunks_while_the_first_run_in_priority_order(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A large start list: the first tasks are submitted before the rest exist (no wait for a thousand
    inserts), every task still runs once, and higher priorities go first across chunks."""
    from campaign.steer import SUBMIT_BATCH

    ledger, cid, ctx = _many_stage_context(engine, tmp_path, "chunks")
    n = 300

    class Prioritised(ManyStage):
        def start(self, ctx: StageContext) -> list[PlannedTask]:
            out = super().start(ctx)
            for p in out[100:]:  # planned last, run first
                p.spec.priority = 1
            return out

        def on_done(self, ctx: StageContext, task: Any, result: TaskResult) -> list[PlannedTask]:
            self.told.append(task.key)
            return []

    stage = Prioritised(tmp_path, n)
    dispatcher = _Recording(make_dispatcher("local", {"max_workers": 2, "retries": 0}, tmp_path / "d"), ledger, cid)
    try:
        assert Steerer(ledger, dispatcher, cid, "local", max_in_flight=n).run_stage(stage, ctx) == "done"
    finally:
        dispatcher.shutdown()
    assert sorted(stage.told) == sorted(f"n/{i}" for i in range(n))
    assert ledger.count_tasks(cid, states=[TaskState.DONE]) == n
    order = [payload for payload, _ in dispatcher.submitted]
    assert order == [*range(100, n), *range(100)]
    assert dispatcher.submitted[0][1] == SUBMIT_BATCH < n  # the first went out with one chunk created


def test_with_a_cap_each_pass_records_results_and_begins_the_next_tasks_in_one_transaction(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Few tasks in flight, many planned: after the first chunk, the attempts that take freed slots are begun in
    the transaction that records the results freeing them (never a transaction of its own), and every task still
    runs once and is recorded before the stage is told."""
    from sqlalchemy import event

    ledger, cid, ctx = _many_stage_context(engine, tmp_path, "capped")
    n, cap = 60, 6
    statements: list[str] = []
    transactions: list[list[str]] = []
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cursor, sql, params, context, many: statements.append(sql.split("(")[0].strip()))

    def on_commit(conn: Any) -> None:
        transactions.append(statements[:])
        statements.clear()

    event.listen(engine, "commit", on_commit)
    dispatcher = make_dispatcher("local", {"max_workers": 2, "retries": 0}, tmp_path / "dispatch")
    stage = ManyStage(tmp_path, n)
    try:
        steer = Steerer(ledger, dispatcher, cid, "local", max_in_flight=cap, concurrency=2)
        assert steer.run_stage(stage, ctx) == "done"
    finally:
        dispatcher.shutdown()
    assert sorted(stage.told) == sorted([f"n/{i}" for i in range(n)] + ["follow-up", "direct"])
    assert ledger.count_tasks(cid, states=[TaskState.DONE]) == n + 2

    def writes(tx: list[str], what: str) -> bool:
        return any(sql.startswith(what) for sql in tx)

    begins = [tx for tx in transactions if writes(tx, "INSERT INTO attempts")]
    alone = [tx for tx in begins if not writes(tx, "INSERT INTO tasks") and not writes(tx, "UPDATE attempts")]
    assert len(begins) > n // cap and len(alone) <= 2, alone  # the follow-ups found by a re-read may start alone


def test_ready_batch_keeps_new_tasks_in_database_order_or_reads_again() -> None:
    """READY rows this loop created join the local batch behind older ones of equal priority, ahead of lower
    priorities, but only while the batch holds every READY task; otherwise the next take reads the database."""
    from types import SimpleNamespace

    from campaign.steer import _ReadyTasks

    def row(name: str, priority: int) -> Any:
        return SimpleNamespace(id=name, priority=priority)

    batch = _ReadyTasks(ledger=None, campaign_id=1, stage_id=1, batch=64)  # type: ignore[arg-type]
    batch.tasks.extend([row("old2", 2), row("old0", 0)])
    batch.count, batch.stale = 2, False
    batch.add([row("new1", 1), row("new0", 0)])
    assert [t.id for t in batch.tasks] == ["old2", "new1", "old0", "new0"] and batch.count == 4 and not batch.stale
    assert [t.id for t in batch.take(2, exclude={"old2"})] == ["new1", "old0"] and batch.count == 1
    batch.count = 5  # more READY tasks than the batch holds
    batch.add([row("later", 9)])
    assert batch.stale and [t.id for t in batch.tasks] == ["new0"]


def test_a_stage_run_for_the_first_time_reads_nothing_back_before_its_first_submission(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """No task of the stage exists yet: one count says so, and the recovery reads (attempts to adopt or re-queue,
    DONE tasks to hand back, READY tasks to run first) are skipped; the first chunk is created and begun at once."""
    from sqlalchemy import event

    ledger, cid, ctx = _many_stage_context(engine, tmp_path, "fresh")
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cursor, sql, params, context, many: statements.append(" ".join(sql.split())))
    seen_at_first_submit: list[str] = []

    class FirstSubmit(_Recording):
        def submit(self, spec: TaskSpec) -> Future[Any]:
            if not seen_at_first_submit:
                seen_at_first_submit.extend(statements)
            return self.inner.submit(spec)

    stage = ManyStage(tmp_path, 5)
    dispatcher = FirstSubmit(make_dispatcher("local", {"max_workers": 2, "retries": 0}, tmp_path / "d"), ledger, cid)
    try:
        assert Steerer(ledger, dispatcher, cid, "local", max_in_flight=8).run_stage(stage, ctx) == "done"
    finally:
        dispatcher.shutdown()
    reads = [sql for sql in seen_at_first_submit if sql.startswith("SELECT")]
    assert len(reads) == 2, reads
    assert reads[0].startswith("SELECT count(*)") and "key" in reads[1].split("WHERE")[0]  # none there; keys known
    assert ledger.count_tasks(cid, states=[TaskState.DONE]) == 5 + 2
