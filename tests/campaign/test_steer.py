"""The steering loop over a real local dispatcher: attempts, retries and failures land in the database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from campaign.dispatch import RetryPolicy, make_dispatcher
from campaign.ledger import Ledger
from campaign.recipe import parse_recipe
from campaign.stages.base import PlannedTask, StageContext
from campaign.steer import Steerer
from campaign.taskqueue import TaskQueue
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
    dispatcher = make_dispatcher("local", {"max_workers": 2}, tmp_path / "dispatch")
    stage = NoopStage(tmp_path)
    try:
        tasks = TaskQueue(ledger, cid, site="local", executor=dispatcher.name, policy=RetryPolicy(max_retries=1))
        assert Steerer(tasks, dispatcher, max_in_flight=2).run_stage(stage, ctx) == "done"
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
    dispatcher = make_dispatcher("local", {"max_workers": 2}, tmp_path / "dispatch")
    stage = ManyStage(tmp_path, n)
    try:
        tasks = TaskQueue(ledger, cid, site="local", executor=dispatcher.name, policy=RetryPolicy(max_retries=0))
        steer = Steerer(tasks, dispatcher, max_in_flight=n, on_progress=lambda p: progress.append((p.done, p.running)))
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


def test_a_long_start_list_runs_while_it_is_still_being_written(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The first tasks of a long start list are claimed and submitted before the rest are written: the workers
    do not wait for 20,000 rows to be created first."""
    ledger, cid, ctx = _many_stage_context(engine, tmp_path, "long")
    n, batch = 350, 100
    dispatcher = make_dispatcher("local", {"max_workers": 2}, tmp_path / "dispatch")
    tasks = TaskQueue(ledger, cid, site="local", executor=dispatcher.name, policy=RetryPolicy(max_retries=0))
    created_at_first_submit: list[int] = []
    submit = dispatcher.submit

    def counting_submit(spec: TaskSpec) -> Any:
        if not created_at_first_submit:
            created_at_first_submit.append(ledger.count_tasks(cid))
        return submit(spec)

    dispatcher.submit = counting_submit  # type: ignore[method-assign]
    try:
        steer = Steerer(tasks, dispatcher, max_in_flight=n, claim_batch=batch)
        assert steer.run_stage(ManyStage(tmp_path, n), ctx) == "done"
    finally:
        dispatcher.shutdown()
    assert created_at_first_submit == [batch]
    assert ledger.count_tasks(cid, states=[TaskState.DONE]) == n + 2
