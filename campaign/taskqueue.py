"""The steering loop's view of the campaign's tasks: create, claim, record (one path each), fenced by the lease.

A :class:`TaskQueue` binds what every call shares (the ledger, the campaign, the site, the retry policy and this
driver's lease) so that the loop passes only what changes: a stage, a count, results. Every call is one
transaction of the :class:`~campaign.ledger.Ledger`, and every call that moves a task renews the lease under
this driver's fencing token, so a driver that lost the campaign to another can write nothing more.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from campaign.adopt import probe_attempt, watch
from campaign.dispatch.failures import RetryPolicy
from campaign.lease import CANCEL_CHECK_S, RENEW_EVERY_S, CampaignCancelled
from campaign.ledger import Ledger
from campaign.records import Recorded, TaskRow
from campaign.stages.base import PlannedTask
from campaign.tasks import DriverRef, ExitCause, TaskResult, TaskSpec, TaskState


@dataclass(frozen=True)
class Recovered:
    """What a resumed stage found in flight: attempts still running (watched) and results recorded now."""

    watched: list[tuple[TaskSpec, Future[TaskResult]]]
    recorded: list[tuple[TaskResult, Recorded]]


class TaskQueue:
    """Create, claim and record the tasks of one campaign as its one driver.

    Args:
        ledger: The campaign database.
        campaign_id: The campaign.
        site: Recorded on every attempt.
        executor: The dispatcher's name, recorded on every attempt.
        policy: Decides, as each failure is recorded, whether its task is tried again.
        driver: This driver and its fencing token (``None``: no lease, as in tests of a single process).
    """

    def __init__(self, ledger: Ledger, campaign_id: int, *, site: str, executor: str | None = None,
                 policy: RetryPolicy | None = None, driver: DriverRef | None = None) -> None:
        self.ledger = ledger
        self.campaign_id = campaign_id
        self.site = site
        self.executor = executor
        self.policy = policy or RetryPolicy()
        self.driver = driver
        self._renewed = time.monotonic()
        self._cancel_checked = time.monotonic()

    def create(self, stage_id: int, planned: Sequence[PlannedTask]) -> int:
        """Create planned tasks READY (idempotent by key). Returns how many were new."""
        return self.ledger.create_tasks(self.campaign_id, stage_id, [(p.key, p.spec) for p in planned],
                                        inputs={p.key: p.inputs for p in planned if p.inputs})

    def claim(self, stage_id: int, n: int) -> list[TaskSpec]:
        """Begin up to ``n`` READY tasks of the stage: the specs to submit, at their new attempt."""
        specs = self.ledger.claim(self.campaign_id, stage_id, n, site=self.site, executor=self.executor,
                                  driver=self.driver)
        self._renewed = time.monotonic()
        return specs

    def record(self, results: Sequence[TaskResult]) -> list[Recorded]:
        """Record results (committed before this returns) and move their tasks on by the retry policy."""
        token = self.driver.token if self.driver is not None else None
        out = self.ledger.record(results, policy=self.policy, campaign_id=self.campaign_id, token=token)
        self._renewed = time.monotonic()
        return out

    def keep_alive(self) -> None:
        """Renew the lease when nothing else did for :data:`~campaign.lease.RENEW_EVERY_S` (long tasks), and look
        for a user's cancel request every :data:`~campaign.lease.CANCEL_CHECK_S`.

        Raises:
            CampaignCancelled: ``campaign cancel`` asked this campaign's run to stop.
        """
        if self.driver is not None and time.monotonic() - self._renewed >= RENEW_EVERY_S:
            self.ledger.renew_lease(self.campaign_id, self.driver.token)
            self._renewed = time.monotonic()
        if time.monotonic() - self._cancel_checked >= CANCEL_CHECK_S:
            self._cancel_checked = time.monotonic()
            if self.ledger.cancel_requested(self.campaign_id):
                raise CampaignCancelled(f"campaign {self.campaign_id}: cancelled by `campaign cancel`")

    def running(self, stage_id: int) -> list[TaskRow]:
        """The stage's tasks in flight."""
        return self.ledger.tasks(self.campaign_id, stage_id=stage_id,
                                 states=[TaskState.SUBMITTED, TaskState.RUNNING])

    def count(self, stage_id: int, *states: TaskState) -> int:
        """How many of the stage's tasks are in ``states`` (all of them without states)."""
        return self.ledger.count_tasks(self.campaign_id, stage_id=stage_id, states=states or None)

    def done_results(self, stage_id: int) -> list[tuple[TaskRow, TaskResult]]:
        """The stage's DONE tasks with their recorded results (as the successful attempt returned them)."""
        attempts = self.ledger.successful_attempts(self.campaign_id, stage_id)
        return [(task, TaskResult(task_id=task.id, attempt=attempts.get(task.id, 1), exit_cause=ExitCause.OK,
                                  result=task.result))
                for task in self.ledger.tasks(self.campaign_id, stage_id=stage_id, states=[TaskState.DONE])]

    def finish_stage(self, stage_id: int, status: str, note: str = "") -> str:
        """Record how a stage ended; a failed stage's reason is ``note`` or, without one, a summary of its FAILED
        tasks (kept in the stage's config as ``failure``). Returns the reason recorded ("" when done)."""
        failure = (note or self.ledger.failure_summary(self.campaign_id, stage_id)) if status != "done" else None
        self.ledger.finish_stage(stage_id, status, failure)
        return failure or ""

    def recover(self, stage_id: int) -> Recovered:
        """What an earlier driver left in flight in this stage: record the attempts that finished, watch those
        still running (their processes are found alive: they are not started again), and put the lost ones back
        to READY (their attempt closed as a free ``node_lost``)."""
        watched: list[tuple[TaskSpec, Future[TaskResult]]] = []
        finished: list[TaskResult] = []
        for spec in self.ledger.open_attempts(self.campaign_id, stage_id):
            probe = probe_attempt(spec, spec.attempt)
            if probe.state == "finished" and probe.result is not None:
                finished.append(TaskResult.model_validate(probe.result))
            elif probe.state == "alive":
                watched.append((spec, watch(spec, spec.attempt)))
        recorded = list(zip(finished, self.record(finished), strict=True))
        self.ledger.requeue_lost(self.campaign_id, stage_id=stage_id, keep=[s.task_id for s, _ in watched])
        return Recovered(watched, recorded)
