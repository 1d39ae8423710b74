"""The steering loop: runs each stage's tasks through a dispatcher, recording every attempt before a stage sees it.

One pass of the loop: submit READY tasks into the free slots, wait for results, record them (one transaction),
and hand each recorded outcome to its stage, which may plan more tasks. A stage is done when nothing is READY
and nothing is in flight. Everything about the database is behind :class:`~campaign.taskqueue.TaskQueue`;
everything about where tasks run is behind the :class:`~campaign.dispatch.Dispatcher`.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from campaign.dispatch.base import Dispatcher
from campaign.dispatch.failures import result_from_exception
from campaign.records import Recorded
from campaign.stages.base import PlannedTask, Stage, StageContext
from campaign.tasks import TaskResult, TaskSpec, TaskState

if TYPE_CHECKING:
    from campaign.taskqueue import TaskQueue


@dataclass
class StageProgress:
    """Counts the live display shows for one stage."""

    name: str
    done: int = 0
    failed: int = 0
    running: int = 0
    ready: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class _InFlight:
    """The attempts in flight; finished ones come out of a queue in the order they finished."""

    def __init__(self) -> None:
        self.specs: dict[Future[TaskResult], TaskSpec] = {}
        self._finished: queue.SimpleQueue[Future[TaskResult]] = queue.SimpleQueue()

    def __len__(self) -> int:
        return len(self.specs)

    def add(self, spec: TaskSpec, fut: Future[TaskResult]) -> None:
        self.specs[fut] = spec
        fut.add_done_callback(self._finished.put)

    def wait(self, timeout: float, linger_s: float = 0.0, refill_at: int = 0) -> list[TaskResult]:
        """The results that finished, waiting up to ``timeout`` seconds for the first.

        With ``linger_s``, results that finish within that long after the first are gathered too (recorded in
        one transaction instead of one each), unless only ``refill_at`` attempts are left unfinished: then the
        workers are about to run out of queued tasks and the loop must refill them now.
        """
        try:
            done = [self._finished.get(timeout=timeout)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + linger_s
        while len(self.specs) - len(done) > refill_at:
            try:
                done.append(self._finished.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        while True:  # and whatever else has finished meanwhile
            try:
                done.append(self._finished.get_nowait())
            except queue.Empty:
                break
        return [_result(self.specs.pop(f), f) for f in done]


def _result(spec: TaskSpec, fut: Future[TaskResult]) -> TaskResult:
    try:
        return fut.result()
    except Exception as exc:  # a dispatcher that lost the attempt itself
        return result_from_exception(spec, exc)


@dataclass
class _StageRun:
    """One stage being run: the stage, its context, its attempts in flight, the tasks it planned that are not
    written yet, and its progress counts."""

    stage: Stage
    ctx: StageContext
    flight: _InFlight
    progress: StageProgress
    unsaved: deque[PlannedTask] = field(default_factory=deque)
    last_poll: float = float("-inf")
    last_ready_count: float = float("-inf")


class Steerer:
    """Runs stages of one campaign through a dispatcher.

    Args:
        tasks: The campaign's task queue (the database, fenced by this driver's lease).
        dispatcher: Where tasks run.
        max_in_flight: Attempts submitted at once (the site's workers plus the tasks queued behind them).
        on_progress: Called with a :class:`StageProgress` as tasks start and finish (for the live display).
        concurrency: Attempts the site runs at once (the rest of ``max_in_flight`` wait queued behind them).
        poll_interval_s: Least seconds between two calls of a stage's ``poll`` hook.
        report_interval_s: Least seconds between two progress reports (the last one of a stage always comes).
        linger_s: How long to keep gathering results after the first before recording them together.
        claim_batch: Tasks claimed (and submitted) per pass at most, so that the first ones start while the
            next are claimed.
    """

    #: Least seconds between two counts of a stage's READY tasks for the display: done and running are counted in
    #: memory at every report, the READY count is a query on the loop's thread.
    READY_COUNT_INTERVAL_S = 1.0

    def __init__(self, tasks: TaskQueue, dispatcher: Dispatcher, *, max_in_flight: int = 4,
                 concurrency: int | None = None, on_progress: Callable[[StageProgress], None] | None = None,
                 poll_interval_s: float = 0.25, report_interval_s: float = 0.1, linger_s: float = 0.05,
                 claim_batch: int = 100) -> None:
        self.tasks = tasks
        self.dispatcher = dispatcher
        self.max_in_flight = max(1, max_in_flight)
        self.concurrency = min(self.max_in_flight, concurrency or self.max_in_flight)
        self.linger_s = linger_s
        self.claim_batch = max(1, claim_batch)
        self.on_progress = on_progress
        self.poll_interval_s = poll_interval_s
        self.report_interval_s = report_interval_s
        self._last_report = 0.0

    def run_stage(self, stage: Stage, ctx: StageContext) -> str:
        """Run one stage until nothing is READY or in flight, and record how it ended (a failed stage with its
        reason). Returns its status (``done`` or ``failed``)."""
        run = _StageRun(stage, ctx, _InFlight(), StageProgress(stage.name))
        resumed = self.tasks.count(ctx.stage_id) > 0
        recovered = self.tasks.recover(ctx.stage_id) if resumed else None
        self._plan(run, stage.start(ctx))
        if recovered is not None:
            for spec, fut in recovered.watched:
                run.flight.add(spec, fut)
            self._hand_over(run, [(r, rec) for r, rec in recovered.recorded if rec.state is TaskState.FAILED])
            self._hand_back_done(run)
        while True:
            self._save(run)
            want = min(self.max_in_flight - len(run.flight), self.claim_batch)
            claimed = self.tasks.claim(ctx.stage_id, want)
            for spec in claimed:
                run.flight.add(spec, self._submit(spec))
            if not run.flight and not run.unsaved:
                break
            self._report(run)
            # READY tasks may wait when the claim got all it asked for (or asked for nothing), or some are unsaved
            ready_may_wait = len(claimed) == want or bool(run.unsaved)
            if ready_may_wait and len(run.flight) < self.max_in_flight:
                finished = run.flight.wait(timeout=0.0)  # free slots to fill at once: take only what is done
            else:
                # READY tasks may wait: refill once half of those queued behind the busy workers have started;
                # none waits: gather results for linger_s
                refill_at = self.concurrency + (len(run.flight) - self.concurrency) // 2 if ready_may_wait else 0
                finished = run.flight.wait(timeout=1.0, linger_s=self.linger_s, refill_at=refill_at)
            self._poll(run)
            self.tasks.keep_alive()
            self._hand_over(run, list(zip(finished, self.tasks.record(finished), strict=True)))
        self._report(run, force=True)
        status = stage.finish(ctx)
        self.tasks.finish_stage(ctx.stage_id, status, getattr(stage, "note", "") or "")
        return status

    def _submit(self, spec: TaskSpec) -> Future[TaskResult]:
        try:
            return self.dispatcher.submit(spec)
        except Exception as exc:  # the dispatcher could not take it (shut down): the attempt fails at once
            fut: Future[TaskResult] = Future()
            fut.set_result(result_from_exception(spec, exc, executor=self.dispatcher.name))
            return fut

    def _plan(self, run: _StageRun, planned: Sequence[PlannedTask]) -> None:
        run.unsaved.extend(planned)

    def _save(self, run: _StageRun) -> None:
        """Write the next ``claim_batch`` planned tasks (one transaction), so that the first ones of a long list
        are claimed and running while the rest are written. Planned tasks not written when the driver dies are
        not lost: a resumed stage plans them again (``start`` and ``on_done`` plan by key)."""
        if run.unsaved:
            batch = [run.unsaved.popleft() for _ in range(min(self.claim_batch, len(run.unsaved)))]
            self.tasks.create(run.ctx.stage_id, batch)

    def _hand_over(self, run: _StageRun, recorded: Sequence[tuple[TaskResult, Recorded]]) -> None:
        """Give each recorded final outcome to the stage (a stale one, or one to retry, is not given)."""
        for result, rec in recorded:
            if rec.stale:
                continue
            if rec.state is TaskState.DONE:
                run.progress.done += 1
                self._plan(run, run.stage.on_done(run.ctx, rec.task, result))
            elif rec.state is TaskState.FAILED:
                run.progress.failed += 1
                self._plan(run, run.stage.on_failed(run.ctx, rec.task, result))

    def _hand_back_done(self, run: _StageRun) -> None:
        """Hand a resumed stage its DONE tasks again: a driver killed between recording a result and the stage
        consuming it left outputs unrecorded. Every stage's ``on_done`` is idempotent (it records by key)."""
        for task, stored in self.tasks.done_results(run.ctx.stage_id):
            self._plan(run, run.stage.on_done(run.ctx, task, stored))

    def _poll(self, run: _StageRun) -> None:
        """Call the stage's ``poll`` hook (early stopping) at most every ``poll_interval_s``."""
        poll = getattr(run.stage, "poll", None)
        if poll is None or time.monotonic() - run.last_poll < self.poll_interval_s:
            return
        run.last_poll = time.monotonic()
        self._plan(run, poll(run.ctx, self.tasks.running(run.ctx.stage_id)))

    def _report(self, run: _StageRun, *, force: bool = False) -> None:
        """Send the stage's progress (and its sub-campaigns', e.g. one row per HPO campaign) to the display."""
        if not self.on_progress or (not force and time.monotonic() - self._last_report < self.report_interval_s):
            return
        now = time.monotonic()
        self._last_report = now
        p = run.progress
        p.running = len(run.flight)
        if force or now - run.last_ready_count >= self.READY_COUNT_INTERVAL_S:  # the one count that reads the db
            run.last_ready_count = now
            p.ready = self.tasks.count(run.ctx.stage_id, TaskState.READY) + len(run.unsaved)
        self.on_progress(p)
        sub = getattr(run.stage, "sub_progress", None)
        for row in sub() if sub is not None else []:
            self.on_progress(StageProgress(name=row["name"], done=row.get("done", 0), failed=row.get("failed", 0),
                                           running=row.get("running", 0), ready=row.get("ready", 0),
                                           extra={k: v for k, v in row.items()
                                                  if k not in ("name", "done", "failed", "running", "ready")}))
