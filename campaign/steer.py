"""The steering loop: the only writer of the campaign database.

For each stage: create its planned tasks (idempotent by key), submit READY tasks through the dispatcher,
record every attempt as it comes back, hand successes and failures to the stage, and repeat until nothing is
ready or in flight. A result is committed to the database before the stage sees it. On a restart, tasks left
SUBMITTED/RUNNING by a dead driver are re-queued (their open attempt closed as ``node_lost``), and DONE tasks are
never run again.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from campaign.ledger import Ledger
from campaign.stages.base import PlannedTask, Stage, StageContext
from campaign.tasks import ExitCause, TaskResult, TaskSpec, TaskState, utcnow


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


def _as_result(value: Any) -> TaskResult:
    return value if isinstance(value, TaskResult) else TaskResult.model_validate(value)


class Steerer:
    """Runs stages of one campaign through a dispatcher, recording everything in the ledger.

    Args:
        ledger: The database writer.
        dispatcher: Where tasks run.
        campaign_id: The campaign row.
        site: Site name recorded on attempts.
        max_in_flight: Cap on tasks submitted at once (the site's worker count).
        on_progress: Called with a :class:`StageProgress` after every event (for the live display).
    """

    def __init__(self, ledger: Ledger, dispatcher: Dispatcher, campaign_id: int, site: str, *,
                 max_in_flight: int = 4,
                 on_progress: Callable[[StageProgress], None] | None = None) -> None:
        self.ledger = ledger
        self.dispatcher = dispatcher
        self.campaign_id = campaign_id
        self.site = site
        self.max_in_flight = max_in_flight
        self.on_progress = on_progress
        self.attempt_queue: queue.SimpleQueue[TaskResult] = queue.SimpleQueue()

    def report_attempt(self, result: TaskResult) -> None:
        """Callback for dispatchers that retry internally: queue an intermediate attempt for recording."""
        self.attempt_queue.put(result)

    def _drain_attempts(self) -> None:
        while True:
            try:
                res = self.attempt_queue.get_nowait()
            except queue.Empty:
                return
            self.ledger.record_attempt(res, final=False)

    def _create(self, ctx: StageContext, planned: list[PlannedTask]) -> None:
        for p in planned:
            self.ledger.create_task(self.campaign_id, ctx.stage_id, p.key, p.spec)

    def run_stage(self, stage: Stage, ctx: StageContext) -> str:
        """Run one stage to completion. Returns the stage status (``done`` or ``failed``)."""
        adopted = self._adopt(ctx)
        self.ledger.requeue_lost(self.campaign_id, stage_id=ctx.stage_id, keep=adopted.values())
        self._create(ctx, stage.start(ctx))
        # A driver killed between recording a result and the stage consuming it leaves DONE tasks whose outputs
        # (datasets, artifacts, lineage, follow-ups) were never recorded: hand them to the stage again (every
        # stage's on_done is idempotent: it records by content / by key and never runs anything twice).
        for done in self.ledger.tasks(self.campaign_id, stage_id=ctx.stage_id, states=[TaskState.DONE]):
            stored = TaskResult(task_id=done.id, attempt=int(done.spec.get("attempt", 1)), exit_cause=ExitCause.OK,
                                result=done.result)
            self._create(ctx, stage.on_done(ctx, done, stored))
        inflight: dict[Future[Any], str] = dict(adopted)
        progress = StageProgress(stage.name)
        while True:
            ready = [t for t in self.ledger.tasks(self.campaign_id, stage_id=ctx.stage_id, states=[TaskState.READY])
                     if t.id not in inflight.values()]
            for task in ready[: max(0, self.max_in_flight - len(inflight))]:
                n = self.ledger.begin_attempt(task.id, site=self.site, executor=self.dispatcher.name)
                spec = TaskSpec.model_validate({**task.spec, "attempt": n})
                try:
                    fut = self.dispatcher.submit(spec)
                except Exception as exc:  # the dispatcher could not even take it: record and fail the attempt
                    now = utcnow()
                    self.ledger.record_attempt(TaskResult(task_id=task.id, attempt=n, exit_cause=ExitCause.ERROR,
                                                          error=f"submit failed: {exc}", started_at=now,
                                                          ended_at=now), final=True)
                    continue
                inflight[fut] = task.id
            self._drain_attempts()
            if not inflight:
                left = self.ledger.tasks(self.campaign_id, stage_id=ctx.stage_id, states=[TaskState.READY])
                if not left:
                    break
                continue
            progress.running = len(inflight)
            progress.ready = max(0, len(ready) - len(inflight))
            self._report(stage, progress)
            finished, _ = wait(list(inflight), timeout=1.0, return_when=FIRST_COMPLETED)
            poll = getattr(stage, "poll", None)
            if poll is not None:
                running_ids = set(inflight.values())
                running = [t for t in self.ledger.tasks(self.campaign_id, stage_id=ctx.stage_id,
                                                        states=[TaskState.SUBMITTED, TaskState.RUNNING])
                           if t.id in running_ids]
                self._create(ctx, poll(ctx, running))
            for fut in finished:
                task_id = inflight.pop(fut)
                try:
                    result = _as_result(fut.result())
                except Exception as exc:  # the dispatcher lost the task (worker or executor died)
                    now = utcnow()
                    task = self._task(task_id)
                    result = TaskResult(task_id=task_id, attempt=int(task.spec.get("attempt", 1)),
                                        exit_cause=ExitCause.NODE_LOST, error=f"{type(exc).__name__}: {exc}",
                                        started_at=now, ended_at=now)
                self._drain_attempts()
                # an adopted attempt that vanished is retried by this loop (no dispatcher retries it)
                state = self.ledger.record_attempt(result, final=True, requeue=fut in adopted)
                task = self._task(task_id)
                if state is TaskState.DONE:
                    progress.done += 1
                    self._create(ctx, stage.on_done(ctx, task, result))
                elif state is TaskState.FAILED:
                    progress.failed += 1
                    self._create(ctx, stage.on_failed(ctx, task, result))
            self._report(stage, progress)
        status = stage.finish(ctx)
        self.ledger.finish_stage(ctx.stage_id, status)
        return status

    def _adopt(self, ctx: StageContext) -> dict[Future[Any], str]:
        """Attempts a killed driver left in flight: record those that finished, watch those still running.

        Returns ``{future: task_id}`` of the attempts being watched (see :mod:`campaign.adopt`); the rest of the
        stage's in-flight tasks are lost and re-queued by the caller.
        """
        from campaign.adopt import probe_attempt, watch

        watched: dict[Future[Any], str] = {}
        for task in self.ledger.tasks(self.campaign_id, stage_id=ctx.stage_id,
                                      states=[TaskState.SUBMITTED, TaskState.RUNNING]):
            spec = TaskSpec.model_validate(task.spec)
            probe = probe_attempt(spec, spec.attempt)
            if probe.state == "finished" and probe.result is not None:
                self.ledger.record_attempt(_as_result(probe.result), final=True, requeue=True)
            elif probe.state == "alive":
                watched[watch(spec, spec.attempt)] = task.id
        return watched

    def _report(self, stage: Stage, progress: StageProgress) -> None:
        """Send the stage's progress (and its sub-campaigns', e.g. one row per HPO campaign) to the display."""
        if not self.on_progress:
            return
        self.on_progress(progress)
        sub = getattr(stage, "sub_progress", None)
        for row in sub() if sub is not None else []:
            self.on_progress(StageProgress(name=row["name"], done=row.get("done", 0), failed=row.get("failed", 0),
                                           running=row.get("running", 0), ready=row.get("ready", 0),
                                           extra={k: v for k, v in row.items()
                                                  if k not in ("name", "done", "failed", "running", "ready")}))

    def _task(self, task_id: str) -> Any:
        from db import models as m

        with self.ledger.Session() as s:
            return s.get(m.Task, task_id)

