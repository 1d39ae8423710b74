"""The steering loop: the only writer of the campaign database.

For each stage: create its planned tasks (idempotent by key), submit READY tasks through the dispatcher,
record every attempt as it comes back, hand successes and failures to the stage, and repeat until nothing is
ready or in flight. A result is committed to the database before the stage sees it. On a restart, tasks left
SUBMITTED/RUNNING by a dead driver are re-queued (their open attempt closed as ``node_lost``), and DONE tasks are
never run again.

The loop is cheap per task: the attempts it starts in one pass are begun in one transaction, the results that
came back since the last pass are recorded in one transaction, finished futures arrive through a queue (no
re-scan of everything in flight), and READY tasks are read from the database only when something may have made
new ones (a stage planned tasks, a failure was re-queued) or the local batch of them ran out. A stage's start
list, while no READY task waits, is begun in the transaction that creates it (nothing this loop has just
written is read back), and recording the attempts it began reads only their tasks' states.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from campaign.heap import frozen_heap
from campaign.ledger import AttemptOutcome, Ledger, Recorded, TaskRow
from campaign.stages.base import PlannedTask, Stage, StageContext
from campaign.tasks import ExitCause, TaskResult, TaskSpec, TaskState, utcnow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


class Dispatcher(Protocol):
    """What the steering loop needs from a dispatcher (see :mod:`campaign.dispatch`)."""

    name: str

    def submit(self, spec: TaskSpec) -> Future[Any]:
        """Run ``spec`` somewhere; the future resolves to a TaskResult (or its JSON dict)."""
        ...

    def shutdown(self) -> None:
        """Stop workers and release resources."""
        ...


@dataclass
class StageProgress:
    """Counts the live display shows for one stage."""

    name: str
    done: int = 0
    failed: int = 0
    running: int = 0
    ready: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


#: Attempts begun in the first transaction when many tasks are submitted at once (each later one doubles, up to
#: :data:`SUBMIT_BATCH_MAX`).
SUBMIT_BATCH = 50
SUBMIT_BATCH_MAX = 400

#: Results recorded per transaction at most.
RECORD_BATCH = 500


def _first_attempt(spec: TaskSpec) -> TaskSpec:
    """``spec`` at attempt 1 (a planned spec usually is: then it is not copied)."""
    return spec if spec.attempt == 1 else spec.model_copy(update={"attempt": 1})


def _as_result(value: Any) -> TaskResult:
    return value if isinstance(value, TaskResult) else TaskResult.model_validate(value)


@dataclass(frozen=True)
class _Launched:
    """A future the loop waits for: whose attempt it is, whether it was adopted from a dead driver, and the task
    row as this loop submitted it (so that recording its result reads only the task's state back)."""

    task_id: str
    attempt: int
    adopted: bool = False
    row: TaskRow | None = None


class _InFlight:
    """The attempts in flight; finished futures come out of a queue in the order they finished."""

    def __init__(self) -> None:
        self.by_future: dict[Future[Any], _Launched] = {}
        self.attempts: dict[str, int] = {}  # task id -> the attempt in flight (its row exists)
        self.rows: dict[str, TaskRow] = {}  # task rows of the attempts in flight that this loop submitted
        self._finished: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()

    def __len__(self) -> int:
        return len(self.by_future)

    def add(self, fut: Future[Any], launched: _Launched) -> None:
        self.by_future[fut] = launched
        self.attempts[launched.task_id] = launched.attempt
        if launched.row is not None:
            self.rows[launched.task_id] = launched.row
        fut.add_done_callback(self._finished.put)

    def pop(self, fut: Future[Any]) -> _Launched:
        launched = self.by_future.pop(fut)
        self.attempts.pop(launched.task_id, None)
        self.rows.pop(launched.task_id, None)
        return launched

    def next_finished(self, timeout: float, linger_s: float = 0.0, keep_busy: int = 0) -> list[Future[Any]]:
        """Futures finished since the last call, waiting up to ``timeout`` seconds for the first one.

        With ``linger_s`` > 0 it then keeps collecting for up to that long after the first one, so that a burst of
        results is recorded in one transaction rather than one per result, but stops as soon as no more than
        ``keep_busy`` of the attempts in flight are left unfinished (the workers would run out of queued tasks:
        refill now), or :data:`RECORD_BATCH` have finished.
        """
        try:
            done = [self._finished.get(timeout=timeout)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + linger_s
        while len(done) < RECORD_BATCH:
            try:
                done.append(self._finished.get_nowait())
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if left <= 0 or len(self.by_future) - len(done) <= keep_busy:
                break
            try:
                done.append(self._finished.get(timeout=left))
            except queue.Empty:
                break
        return [f for f in done if f in self.by_future]


class _Backlog:
    """A stage's planned start tasks not yet created, highest priority first (stable), in growing chunks.

    Creating a thousand tasks takes this loop 100-200 ms on a small machine, all before the first one could
    start; created a chunk at a time, the first :data:`SUBMIT_BATCH` run while the rest are written. A driver
    killed meanwhile loses nothing: ``start`` plans the same keys again on a restart and creation is
    idempotent by key.
    """

    def __init__(self, planned: Iterable[PlannedTask]) -> None:
        self.planned: deque[PlannedTask] = deque(sorted(planned, key=lambda p: -p.spec.priority))
        self.size = SUBMIT_BATCH

    def __len__(self) -> int:
        return len(self.planned)

    def take(self) -> list[PlannedTask]:
        """The next chunk: :data:`SUBMIT_BATCH` tasks first, each later chunk twice the last, up to
        :data:`SUBMIT_BATCH_MAX` (few transactions however few tasks the loop keeps in flight)."""
        n = min(self.size, len(self.planned))
        self.size = min(2 * self.size, SUBMIT_BATCH_MAX)
        return [self.planned.popleft() for _ in range(n)]


class _ReadyTasks:
    """A local batch of the stage's READY tasks, in the database's order (priority, then age).

    ``stale`` means something may have made READY tasks the batch does not hold; the next :meth:`take` reads
    them again. ``count`` is the number of READY tasks in the stage (known at the last read, minus those taken).
    """

    def __init__(self, ledger: Ledger, campaign_id: int, stage_id: int, batch: int) -> None:
        self.ledger = ledger
        self.campaign_id = campaign_id
        self.stage_id = stage_id
        self.batch = batch
        self.tasks: deque[Any] = deque()
        self.count = 0
        self.stale = True

    def take(self, n: int, exclude: Collection[str]) -> list[Any]:
        """Up to ``n`` READY tasks (not in ``exclude``), reading the database only when needed."""
        if n <= 0:
            return []
        if self.stale or (not self.tasks and self.count > 0):
            self._read(max(n, self.batch))
        out: list[Any] = []
        while self.tasks and len(out) < n:
            task = self.tasks.popleft()
            self.count -= 1
            if task.id not in exclude:
                out.append(task)
        return out

    def add(self, rows: list[Any]) -> None:
        """READY tasks this loop has just created (younger than every READY task there is): kept in the batch, in
        the database's order, when the batch holds every READY task of the stage; otherwise read later."""
        if not rows:
            return
        if self.stale or self.count != len(self.tasks):
            self.stale = True
            return
        # a stable sort by priority keeps the older of equal priority first, as the database orders them
        self.tasks = deque(sorted([*self.tasks, *rows], key=lambda t: -t.priority))
        self.count += len(rows)

    def refresh(self) -> bool:
        """Read the READY tasks again; whether there are any."""
        self._read(self.batch)
        return bool(self.tasks)

    def _read(self, limit: int) -> None:
        rows = self.ledger.tasks(self.campaign_id, stage_id=self.stage_id, states=[TaskState.READY], limit=limit)
        self.tasks = deque(rows)
        self.count = len(rows) if len(rows) < limit else self.ledger.count_tasks(
            self.campaign_id, stage_id=self.stage_id, states=[TaskState.READY])
        self.stale = False


class Steerer:
    """Runs stages of one campaign through a dispatcher, recording everything in the ledger.

    Args:
        ledger: The database writer.
        dispatcher: Where tasks run.
        campaign_id: The campaign row.
        site: Site name recorded on attempts.
        max_in_flight: Cap on tasks submitted at once (the site's worker count).
        on_progress: Called with a :class:`StageProgress` as tasks start and finish (for the live display).
        poll_interval_s: Least seconds between two calls of a stage's ``poll`` hook (it is called on every
            pass of the loop that comes at least this long after the previous call, and a pass comes at least
            once a second while tasks are in flight).
        report_interval_s: Least seconds between two progress reports (the last one of a stage always comes).
        record_linger_s: How long to keep gathering results after the first one before recording them together,
            when no READY task waits for a slot or, with ``concurrency``, until only half the tasks queued behind
            the busy workers are left.
        concurrency: Tasks the site runs at once (``max_in_flight`` minus the tasks queued behind busy workers);
            ``None``: unknown, every result is recorded as soon as it comes while READY tasks wait.
    """

    def __init__(self, ledger: Ledger, dispatcher: Dispatcher, campaign_id: int, site: str, *,
                 max_in_flight: int = 4,
                 on_progress: Callable[[StageProgress], None] | None = None,
                 poll_interval_s: float = 0.25, report_interval_s: float = 0.1,
                 record_linger_s: float = 0.05, concurrency: int | None = None) -> None:
        self.ledger = ledger
        self.dispatcher = dispatcher
        self.campaign_id = campaign_id
        self.site = site
        self.max_in_flight = max(1, max_in_flight)
        self.on_progress = on_progress
        self.poll_interval_s = poll_interval_s
        self.report_interval_s = report_interval_s
        self.record_linger_s = record_linger_s
        self.concurrency = concurrency
        self.attempt_queue: queue.SimpleQueue[TaskResult] = queue.SimpleQueue()
        self._last_report = 0.0

    def report_attempt(self, result: TaskResult) -> None:
        """Callback for dispatchers that retry internally: queue an intermediate attempt for recording."""
        self.attempt_queue.put(result)

    def _retried_attempts(self) -> list[AttemptOutcome]:
        """Attempts the dispatcher reported as retried since the last call (recorded as not final)."""
        out: list[AttemptOutcome] = []
        while True:
            try:
                out.append(AttemptOutcome(self.attempt_queue.get_nowait(), final=False))
            except queue.Empty:
                return out

    def _create(self, ctx: StageContext, planned: Iterable[PlannedTask], ready: _ReadyTasks | None = None,
                begin: int = 0) -> list[tuple[TaskRow, TaskSpec]]:
        """Create the stage's planned tasks in one transaction, beginning the first ``begin`` new ones in it; the
        other new ones join the local READY batch (a key planned before makes it stale: the database says what
        that task is now). Returns the begun tasks' rows and the specs to submit."""
        planned = list(planned)
        if not planned:
            return []
        made = self.ledger.create_and_begin(self.campaign_id, ctx.stage_id, [(p.key, p.spec) for p in planned],
                                            begin=begin, site=self.site, executor=self.dispatcher.name)
        if ready is not None:
            if made.existing:
                ready.stale = True
            ready.add(made.ready)
        specs = {p.spec.task_id: p.spec for p in planned}
        return [(row, _first_attempt(specs[row.id])) for row in made.begun]

    def run_stage(self, stage: Stage, ctx: StageContext) -> str:
        """Run one stage to completion. Returns the stage status (``done`` or ``failed``)."""
        with frozen_heap():  # the garbage collector's passes skip what existed before the stage
            return self._run_stage(stage, ctx)

    def _run_stage(self, stage: Stage, ctx: StageContext) -> str:
        # a stage with no tasks yet (its first run) has nothing to recover: its start list goes out at once
        resumed = self.ledger.count_tasks(self.campaign_id, stage_id=ctx.stage_id) > 0
        adopted: dict[Future[Any], _Launched] = {}
        if resumed:  # attempts still running are watched, the other ones left in flight re-queued
            adopted = self._adopt(ctx)
            self.ledger.requeue_lost(self.campaign_id, stage_id=ctx.stage_id,
                                     keep=[a.task_id for a in adopted.values()])
        backlog = _Backlog(stage.start(ctx))  # created a chunk at a time while the first tasks run
        ready = _ReadyTasks(self.ledger, self.campaign_id, ctx.stage_id, batch=max(64, 2 * self.max_in_flight))
        if resumed:
            self._hand_back_done(stage, ctx)
            ready.refresh()  # READY tasks an earlier run left go first
        else:
            ready.stale = False  # the (empty) batch holds every READY task
        flight = _InFlight()
        for fut, launched in adopted.items():
            flight.add(fut, launched)
        progress = StageProgress(stage.name)
        last_poll = float("-inf")
        while True:
            free = self.max_in_flight - len(flight)
            if free > 0 and backlog and ready.count < free:  # READY ones run short: next chunk
                # none waits: begin the new ones as they are created; else they queue behind those waiting
                begin = free if ready.count == 0 and not ready.stale else 0
                self._launch(stage, ctx, flight, self._create(ctx, backlog.take(), ready, begin), progress, ready)
                free = self.max_in_flight - len(flight)
            if free > 0:
                self._submit(stage, ctx, flight, ready.take(free, flight.attempts), progress, ready)
            if not flight:
                self._record(stage, ctx, flight, [], progress, ready)  # attempts reported after the last result
                # refresh: also finds READY tasks a stage made without returning them
                if not ready.refresh() and not backlog:
                    break
                continue
            progress.running, progress.ready = len(flight), max(0, ready.count) + len(backlog)
            self._report(stage, progress)
            # gather a burst of results into one transaction (a short delay the stage never notices) instead of
            # recording them one by one as they trickle in, while no READY task waits or enough are still queued
            # behind the busy workers that none of them idles meanwhile (refill once half the queued ones have
            # started: the other half keeps the workers going while the results are recorded and the next tasks
            # begun and submitted); with planned tasks still to create and room for them, only take what has
            # already finished
            if backlog and len(flight) < self.max_in_flight:
                finished = flight.next_finished(timeout=0.0)
            elif ready.count <= 0:
                finished = flight.next_finished(timeout=1.0, linger_s=self.record_linger_s)
            elif self.concurrency is not None and len(flight) > self.concurrency:
                finished = flight.next_finished(timeout=1.0, linger_s=self.record_linger_s,
                                                keep_busy=(self.concurrency + self.max_in_flight) // 2)
            else:
                finished = flight.next_finished(timeout=1.0)
            poll = getattr(stage, "poll", None)
            if poll is not None and time.monotonic() - last_poll >= self.poll_interval_s:
                last_poll = time.monotonic()
                running = [t for t in self.ledger.tasks(self.campaign_id, stage_id=ctx.stage_id,
                                                        states=[TaskState.SUBMITTED, TaskState.RUNNING])
                           if t.id in flight.attempts]
                self._create(ctx, poll(ctx, running), ready)
            self._record(stage, ctx, flight, finished, progress, ready)
        progress.running, progress.ready = 0, 0
        self._report(stage, progress, force=True)
        status = stage.finish(ctx)
        self.ledger.finish_stage(ctx.stage_id, status)
        return status

    def _hand_back_done(self, stage: Stage, ctx: StageContext) -> None:
        """Hand the stage's DONE tasks to it again (a resumed stage).

        A driver killed between recording a result and the stage consuming it leaves DONE tasks whose outputs
        (datasets, artifacts, lineage, follow-ups) were never recorded: every stage's ``on_done`` is idempotent
        (it records by content / by key and never runs anything twice).
        """
        for done in self.ledger.tasks(self.campaign_id, stage_id=ctx.stage_id, states=[TaskState.DONE]):
            stored = TaskResult(task_id=done.id, attempt=int(done.spec.get("attempt", 1)), exit_cause=ExitCause.OK,
                                result=done.result)
            self._create(ctx, stage.on_done(ctx, done, stored))

    def _submit(self, stage: Stage, ctx: StageContext, flight: _InFlight, tasks: list[Any],
                progress: StageProgress, ready: _ReadyTasks) -> None:
        """Begin the attempts of ``tasks`` in transactions of growing size (:data:`SUBMIT_BATCH`, then double), each
        batch handed to the dispatcher as soon as it is recorded (workers start on the first batch while the next
        is written)."""
        i, size = 0, SUBMIT_BATCH
        while i < len(tasks):  # the first batch gets workers going; later ones double (fewer transactions)
            self._launch(stage, ctx, flight, self._begin(tasks[i:i + size]), progress, ready)
            i, size = i + size, min(2 * size, SUBMIT_BATCH_MAX)

    def _begin(self, tasks: list[Any], session: Session | None = None) -> list[tuple[TaskRow, TaskSpec]]:
        """Begin the attempts of READY ``tasks`` (in ``session``'s transaction, if given): each begun task's row
        and the spec to submit."""
        if not tasks:
            return []
        numbers = self.ledger.begin_attempts([t.id for t in tasks], site=self.site, executor=self.dispatcher.name,
                                             specs={t.id: t.spec for t in tasks}, session=session)
        begun = []
        for task in tasks:
            n = numbers.get(task.id)
            if n is None:  # no longer READY (a stage settled it meanwhile)
                continue
            task.spec = {**task.spec, "attempt": n}  # as begin_attempts wrote it
            begun.append((task, TaskSpec.model_validate(task.spec)))
        return begun

    def _launch(self, stage: Stage, ctx: StageContext, flight: _InFlight, begun: list[tuple[TaskRow, TaskSpec]],
                progress: StageProgress, ready: _ReadyTasks) -> None:
        """Hand begun attempts to the dispatcher; one it refuses is recorded as failed at once."""
        refused: list[AttemptOutcome] = []
        for task, spec in begun:
            n = spec.attempt
            try:
                fut = self.dispatcher.submit(spec)
            except Exception as exc:  # the dispatcher could not even take it: record and fail the attempt
                now = utcnow()
                refused.append(AttemptOutcome(TaskResult(task_id=task.id, attempt=n, exit_cause=ExitCause.ERROR,
                                                         error=f"submit failed: {exc}", started_at=now,
                                                         ended_at=now)))
                continue
            flight.add(fut, _Launched(task.id, n, row=task))
        if not refused:
            return
        recorded = self.ledger.record_attempts(refused, rows={t.id: t for t, _ in begun},
                                               open_attempts={(t.id, spec.attempt) for t, spec in begun})
        for outcome, rec in zip(refused, recorded, strict=True):
            self._hand_over(stage, ctx, outcome.result, rec, progress, ready)

    def _record(self, stage: Stage, ctx: StageContext, flight: _InFlight, finished: list[Future[Any]],
                progress: StageProgress, ready: _ReadyTasks) -> None:
        """Record retried attempts and ``finished`` results in one transaction, which also begins the READY tasks
        that take the slots they free; submit those, then hand the results to the stage."""
        outcomes = self._retried_attempts()
        first_final = len(outcomes)
        # the rows this loop holds of the tasks recorded here (retried attempts: of tasks still in flight), and
        # the attempts it began (they exist: recording them reads no attempt row back)
        rows = {o.result.task_id: flight.rows[o.result.task_id] for o in outcomes if o.result.task_id in flight.rows}
        begun = {(tid, flight.attempts[tid]) for tid in (o.result.task_id for o in outcomes) if tid in flight.attempts}
        for fut in finished:
            launched = flight.pop(fut)
            begun.add((launched.task_id, launched.attempt))
            if launched.row is not None:
                rows[launched.task_id] = launched.row
            try:
                result = _as_result(fut.result())
            except Exception as exc:  # the dispatcher lost the task (worker or executor died)
                now = utcnow()
                result = TaskResult(task_id=launched.task_id, attempt=launched.attempt,
                                    exit_cause=ExitCause.NODE_LOST, error=f"{type(exc).__name__}: {exc}",
                                    started_at=now, ended_at=now)
            # an adopted attempt that vanished is retried by this loop (no dispatcher retries it)
            outcomes.append(AttemptOutcome(result, final=True, requeue=launched.adopted))
        if not outcomes:
            return
        following = ready.take(self.max_in_flight - len(flight), flight.attempts)
        with self.ledger.unit_of_work() as s:  # committed before any stage sees a result
            recorded = self.ledger.record_attempts(outcomes, rows=rows, open_attempts=begun, session=s)
            started = self._begin(following, session=s)
        self._launch(stage, ctx, flight, started, progress, ready)
        for outcome, rec in zip(outcomes[first_final:], recorded[first_final:], strict=True):
            self._hand_over(stage, ctx, outcome.result, rec, progress, ready)

    def _hand_over(self, stage: Stage, ctx: StageContext, result: TaskResult, rec: Recorded,
                   progress: StageProgress, ready: _ReadyTasks) -> None:
        """Give a recorded final result to the stage (a re-queued task goes back to the READY batch)."""
        if rec.state is TaskState.DONE:
            progress.done += 1
            self._create(ctx, stage.on_done(ctx, rec.task, result), ready)
        elif rec.state is TaskState.FAILED:
            progress.failed += 1
            self._create(ctx, stage.on_failed(ctx, rec.task, result), ready)
        elif rec.state is TaskState.READY:
            ready.stale = True

    def _adopt(self, ctx: StageContext) -> dict[Future[Any], _Launched]:
        """Attempts a killed driver left in flight: record those that finished, watch those still running.

        Returns ``{future: attempt}`` of the attempts being watched (see :mod:`campaign.adopt`); the rest of the
        stage's in-flight tasks are lost and re-queued by the caller.
        """
        from campaign.adopt import probe_attempt, watch

        watched: dict[Future[Any], _Launched] = {}
        for task in self.ledger.tasks(self.campaign_id, stage_id=ctx.stage_id,
                                      states=[TaskState.SUBMITTED, TaskState.RUNNING]):
            spec = TaskSpec.model_validate(task.spec)
            probe = probe_attempt(spec, spec.attempt)
            if probe.state == "finished" and probe.result is not None:
                self.ledger.record_attempt(_as_result(probe.result), final=True, requeue=True)
            elif probe.state == "alive":
                watched[watch(spec, spec.attempt)] = _Launched(task.id, spec.attempt, adopted=True)
        return watched

    def _report(self, stage: Stage, progress: StageProgress, *, force: bool = False) -> None:
        """Send the stage's progress (and its sub-campaigns', e.g. one row per HPO campaign) to the display."""
        if not self.on_progress:
            return
        now = time.monotonic()
        if not force and now - self._last_report < self.report_interval_s:
            return
        self._last_report = now
        self.on_progress(progress)
        sub = getattr(stage, "sub_progress", None)
        for row in sub() if sub is not None else []:
            self.on_progress(StageProgress(name=row["name"], done=row.get("done", 0), failed=row.get("failed", 0),
                                           running=row.get("running", 0), ready=row.get("ready", 0),
                                           extra={k: v for k, v in row.items()
                                                  if k not in ("name", "done", "failed", "running", "ready")}))
