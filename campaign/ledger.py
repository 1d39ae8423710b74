"""The campaign ledger: the one writer of the campaign database.

The steering process records everything through this class: campaigns, stages, tasks and their state machine,
attempts with their exit causes, datasets, artifacts, trials, models, metrics, screening hits and typed lineage.
A result is written (and committed) before the steering loop acts on it, so nothing acknowledged is lost.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Engine, Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import campaign
from campaign.dispatch.failures import FREE_CAUSES, RetryPolicy
from campaign.errors import CampaignInputError
from campaign.lease import DriverBusy, LeaseHolder, LeaseLost
from campaign.provenance import Provenance
from campaign.records import Recorded, TaskRow
from campaign.tasks import DriverRef, ExitCause, TaskResult, TaskSpec, TaskState, check_transition, utcnow
from db import models as m
from db.engine import session_factory, transaction


class CampaignConflict(ValueError):
    """A campaign of that name exists with a different recipe."""


#: Ids per ``IN (...)`` list (well under SQLite's and PostgreSQL's bound-parameter limits).
IN_CHUNK = 500

#: The error of an attempt closed because the driver that submitted it stopped (retried free, never charged).
DRIVER_STOPPED = "the steering process stopped while this attempt was in flight"

_T = TypeVar("_T")


def _chunks(items: Sequence[_T], size: int = IN_CHUNK) -> Iterator[Sequence[_T]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


#: The tables the hot paths write with Core statements (no ORM bulk machinery).
TASKS: Table = cast(Table, m.Task.__table__)
ATTEMPTS: Table = cast(Table, m.Attempt.__table__)
CAMPAIGNS: Table = cast(Table, m.Campaign.__table__)
LINEAGE: Table = cast(Table, m.Lineage.__table__)

_TASK_COLUMNS = tuple(TASKS.c[f.name] for f in fields(TaskRow))


def _task_rows(s: Session, q: Any) -> list[TaskRow]:
    """``q`` (a select of :data:`_TASK_COLUMNS`) as :class:`TaskRow` s."""
    return [TaskRow(*row) for row in s.connection().execute(q)]


@dataclass(frozen=True)
class CancelRequest:
    """What ``campaign cancel`` found: the campaign, its status, and the live driver asked to stop (if any)."""

    campaign_id: int
    status: str
    driver: LeaseHolder | None


@dataclass
class _History:
    """What the attempts of the tasks being recorded say (see :meth:`Ledger._tasks_and_attempts`)."""

    open: set[tuple[str, int]] = field(default_factory=set)
    latest: dict[str, int] = field(default_factory=dict)
    free_used: dict[str, int] = field(default_factory=dict)


def _live_holder(row: m.Campaign) -> LeaseHolder | None:
    """The driver holding the campaign's lease, unless there is none or it is provably dead."""
    if row.driver_token is None:
        return None
    holder = LeaseHolder(row.driver_host, row.driver_pid, row.driver_start_ticks, row.driver_since,
                         row.driver_heartbeat_at)
    now = utcnow()
    beat = _aware(row.driver_heartbeat_at or row.driver_since or now)
    return None if holder.provably_dead((now - beat).total_seconds()) else holder


def git_sha(start: Path | None = None) -> str | None:
    """The git commit of the code, when it runs from a checkout."""
    here = start or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


class Ledger(Provenance):
    """The campaign database as the steering process writes it: campaigns, stages, tasks and attempts, the
    driver lease, and (from :class:`~campaign.provenance.Provenance`) what the stages record."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.Session = session_factory(engine)

    # ------------------------------------------------------------------------------------------ campaigns
    def open_campaign(self, *, name: str, recipe_text: str, recipe_hash: str, site: str,
                      recipe_path: str | None = None, profile: str | None = None,
                      resume_only: bool = False,
                      extension: Callable[[str], list[str] | None] | None = None) -> m.Campaign:
        """Create the campaign row, or return the existing one, unchanged, when the recipe is the same (a resume).

        Args:
            extension: Given the stored recipe's text, the changes that make this recipe an extension of it
                (see :func:`campaign.recipe.extension_of`), or ``None``. A campaign whose recipe changed only so
                is extended in place: its recipe becomes this one, and the change is recorded in the ``hpo``
                stage's ``config.extensions`` (when, from which hash, what changed).

        Raises:
            CampaignConflict: a campaign of this name exists with a different recipe hash (that is no extension).
            DriverBusy: the campaign would be extended while a live driver runs it.
            KeyError: ``resume_only`` and no such campaign.
        """
        with transaction(self.Session) as s:
            row = s.scalar(select(m.Campaign).where(m.Campaign.name == name))
            if row is None:
                if resume_only:
                    raise KeyError(f"no campaign named {name!r} in the database")
                row = m.Campaign(
                    name=name, recipe_text=recipe_text, recipe_hash=recipe_hash, recipe_path=recipe_path,
                    code_version=campaign.__version__, git_sha=git_sha(), user=getpass.getuser(),
                    host=socket.gethostname(), site=site, profile=profile, status="running", started_at=utcnow(),
                )
                s.add(row)
                s.flush()
            elif row.recipe_hash != recipe_hash:
                changes = extension(row.recipe_text) if extension is not None else None
                if changes is None:
                    raise CampaignConflict(
                        f"campaign {name!r} already exists with a different recipe (hash {row.recipe_hash[:12]} "
                        f"vs {recipe_hash[:12]}); rename the campaign or use `campaign resume {name}` (a recipe "
                        "that only raises HPO studies' max_trials extends the campaign in place)"
                    )
                holder = _live_holder(row)
                if holder is not None:
                    raise DriverBusy(f"campaign {name!r} is being run by another driver ({holder.describe()}); "
                                     "wait for it to end or cancel it before extending it")
                hpo = s.scalar(select(m.Stage).where(m.Stage.campaign_id == row.id, m.Stage.name == "hpo")
                               .with_for_update())
                if hpo is not None:
                    done = list((hpo.config or {}).get("extensions", []))
                    done.append({"at": utcnow().isoformat(), "from_hash": row.recipe_hash, "changes": changes})
                    hpo.config = {**(hpo.config or {}), "extensions": done}
                row.recipe_text, row.recipe_hash = recipe_text, recipe_hash
                if recipe_path is not None:
                    row.recipe_path = recipe_path
            return row

    def start_campaign(self, campaign_id: int) -> None:
        """Mark the campaign running again (a resume; its driver holds the lease)."""
        with transaction(self.Session) as s:
            s.execute(update(m.Campaign).where(m.Campaign.id == campaign_id).values(status="running", ended_at=None))

    def finish_campaign(self, campaign_id: int, status: str) -> None:
        """Mark the campaign finished (``done`` / ``failed`` / ``interrupted``)."""
        with transaction(self.Session) as s:
            s.execute(update(m.Campaign).where(m.Campaign.id == campaign_id).values(status=status, ended_at=utcnow()))

    # --------------------------------------------------------------------------------------------- stages
    def stage(self, campaign_id: int, name: str, kind: str, config: dict[str, Any] | None = None) -> m.Stage:
        """Get or create a stage row."""
        with transaction(self.Session) as s:
            row = s.scalar(select(m.Stage).where(m.Stage.campaign_id == campaign_id, m.Stage.name == name))
            if row is None:
                row = m.Stage(campaign_id=campaign_id, name=name, kind=kind, config=config or {}, status="running",
                              started_at=utcnow())
                s.add(row)
                s.flush()
            elif row.status != "done":
                row.status = "running"
            return row

    def update_stage_config(self, stage_id: int, **items: Any) -> None:
        """Merge ``items`` into a stage's ``config`` JSON (e.g. a failure reason, an HPO warm-start snapshot)."""
        with transaction(self.Session) as s:
            row = s.get(m.Stage, stage_id, with_for_update=True)
            if row is not None:
                row.config = {**(row.config or {}), **items}

    def finish_stage(self, stage_id: int, status: str, failure: str | None = None) -> None:
        """Mark a stage finished; a failed one with its reason (``config.failure``), in the same transaction."""
        with transaction(self.Session) as s:
            row = s.get(m.Stage, stage_id, with_for_update=True)
            if row is None:
                return
            row.status, row.ended_at = status, utcnow()
            if failure is not None:
                row.config = {**(row.config or {}), "failure": failure}

    # ---------------------------------------------------------------------------------------------- lease
    def acquire_lease(self, campaign_id: int, driver: DriverRef) -> None:
        """Take the campaign's driver lease for ``driver`` (its token becomes the campaign's fencing token).

        Raises:
            DriverBusy: another driver holds it and is not provably dead (see :class:`LeaseHolder`).
        """
        with transaction(self.Session) as s:
            row = s.get(m.Campaign, campaign_id, with_for_update=True)
            if row is None:
                raise KeyError(campaign_id)
            now = utcnow()
            holder = _live_holder(row)
            if holder is not None:
                raise DriverBusy(f"campaign {row.name!r} is being run by another driver ({holder.describe()}); "
                                 "wait for it to end or stop it first")
            row.driver_token, row.driver_host, row.driver_pid = driver.token, driver.host, driver.pid
            row.driver_start_ticks, row.driver_since, row.driver_heartbeat_at = driver.start_ticks, now, now
            row.cancel_requested_at = None  # a cancel request was for the run before this one

    def renew_lease(self, campaign_id: int, token: str, s: Session | None = None) -> None:
        """Renew the lease held under ``token`` (in ``s``'s transaction when given).

        Raises:
            LeaseLost: another driver has taken the campaign.
        """
        with self.unit_of_work(s) as s:
            done = s.connection().execute(update(CAMPAIGNS)
                                          .where(m.Campaign.id == campaign_id, m.Campaign.driver_token == token)
                                          .values(driver_heartbeat_at=utcnow()))
            if done.rowcount != 1:
                raise LeaseLost(f"campaign {campaign_id}: another driver took the campaign over")

    def cancel_requested(self, campaign_id: int) -> bool:
        """Whether a user asked (``campaign cancel``) to stop this campaign's run."""
        with self.Session() as s:
            return s.scalar(select(m.Campaign.cancel_requested_at).where(m.Campaign.id == campaign_id)) is not None

    def request_cancel(self, name: str) -> CancelRequest:
        """Ask the driver running campaign ``name`` to stop (the one write ``campaign cancel`` makes: from any host
        that reaches the database, never to a task). When no live driver holds the campaign nothing is written.

        Raises:
            CampaignInputError: no campaign of that name.
        """
        with transaction(self.Session) as s:
            row = s.scalar(select(m.Campaign).where(m.Campaign.name == name).with_for_update())
            if row is None:
                known = s.scalars(select(m.Campaign.name).order_by(m.Campaign.id.desc()).limit(20)).all()
                raise CampaignInputError(f"no campaign named {name!r}; known: {', '.join(known) or 'none'}")
            holder = _live_holder(row)
            if holder is not None:
                row.cancel_requested_at = utcnow()
            return CancelRequest(row.id, row.status, holder)

    def retry_failed(self, campaign_id: int, stage: str) -> int:
        """Make the FAILED tasks of ``stage`` READY again, their retry budget afresh (``campaign retry``): the one
        move out of a terminal state, made by a user, only while the caller holds the campaign's lease. Their
        attempts stay as they were (the next one is numbered after them). Returns how many tasks were moved.

        Raises:
            CampaignInputError: the campaign has no stage of that name.
        """
        with transaction(self.Session) as s:
            stage_id = s.scalar(select(m.Stage.id).where(m.Stage.campaign_id == campaign_id, m.Stage.name == stage))
            if stage_id is None:
                known = s.scalars(select(m.Stage.name).where(m.Stage.campaign_id == campaign_id)
                                  .order_by(m.Stage.id)).all()
                raise CampaignInputError(f"the campaign has no stage {stage!r} (it has: {', '.join(known) or 'none'})")
            done = s.connection().execute(update(TASKS).where(TASKS.c.stage_id == stage_id,
                                                              TASKS.c.state == TaskState.FAILED)
                                          .values(state=TaskState.READY, charged_failures=0, updated_at=utcnow()))
            if done.rowcount:
                s.execute(update(m.Stage).where(m.Stage.id == stage_id).values(status="pending", ended_at=None))
            return int(done.rowcount)

    def campaign_status(self, campaign_id: int) -> str:
        """The campaign's status (``running``, ``done``, ``failed``, ``interrupted``, ``cancelled``)."""
        with self.Session() as s:
            return str(s.scalar(select(m.Campaign.status).where(m.Campaign.id == campaign_id)))

    def lease_token(self, campaign_id: int) -> str | None:
        """The fencing token of the driver holding the campaign (``None``: nobody holds it)."""
        with self.Session() as s:
            return s.scalar(select(m.Campaign.driver_token).where(m.Campaign.id == campaign_id))

    def release_lease(self, campaign_id: int, token: str) -> None:
        """Give the lease up (a no-op when another driver holds it now)."""
        with transaction(self.Session) as s:
            s.execute(update(m.Campaign).where(m.Campaign.id == campaign_id, m.Campaign.driver_token == token)
                      .values(driver_token=None, driver_heartbeat_at=utcnow()))

    # ---------------------------------------------------------------------------------------------- tasks
    def create_tasks(self, campaign_id: int, stage_id: int, planned: Sequence[tuple[str, TaskSpec]], *,
                     inputs: Mapping[str, Sequence[tuple[str, Any]]] | None = None) -> int:
        """Create READY tasks in one transaction, idempotent by key: a key already in the campaign (or repeated)
        keeps its first task. Tasks of equal priority are claimed in the order given. Returns how many were new.

        ``inputs`` maps a key to the lineage endpoints its task reads: each new task gets its ``input_of`` edges in
        the same transaction."""
        keys = list(dict.fromkeys(k for k, _ in planned))
        if not keys:
            return 0
        first = dict(reversed(planned))
        try:
            with transaction(self.Session) as s:
                known: set[str] = set()
                for chunk in _chunks(keys):
                    known.update(s.connection().execute(
                        select(m.Task.key).where(m.Task.campaign_id == campaign_id, m.Task.key.in_(chunk))).scalars())
                now = utcnow()
                new = [self._task_values(campaign_id, stage_id, key, first[key], now + timedelta(microseconds=i))
                       for i, key in enumerate(k for k in keys if k not in known)]
                if new:
                    s.connection().execute(insert(TASKS), new)  # Core: no ORM bulk machinery
                    edges = [dict(campaign_id=campaign_id, kind=m.LineageKind.INPUT_OF, src_kind=m.EntityKind(k),
                                  src_id=str(i), dst_kind=m.EntityKind.TASK, dst_id=row["id"], created_at=now)
                             for row in new for k, i in dict.fromkeys((inputs or {}).get(row["key"], ()))]
                    if edges:
                        s.connection().execute(insert(LINEAGE), edges)
                return len(new)
        except IntegrityError:  # pragma: no cover - a concurrent writer made one of the keys: one at a time
            return sum(self._create_one(campaign_id, stage_id, k, first[k]) for k in keys)

    def _create_one(self, campaign_id: int, stage_id: int, key: str, spec: TaskSpec) -> bool:
        with transaction(self.Session) as s:
            if s.scalar(select(m.Task.id).where(m.Task.campaign_id == campaign_id, m.Task.key == key)) is not None:
                return False
            s.connection().execute(insert(TASKS),
                                   [self._task_values(campaign_id, stage_id, key, spec, utcnow())])
            return True

    def create_task(self, campaign_id: int, stage_id: int, key: str, spec: TaskSpec) -> TaskRow:
        """Create one READY task (idempotent by key) and return the campaign's task with that key."""
        self.create_tasks(campaign_id, stage_id, [(key, spec)])
        return self.get_task_by_key(campaign_id, key)

    @staticmethod
    def _task_values(campaign_id: int, stage_id: int, key: str, spec: TaskSpec, created: datetime) -> dict[str, Any]:
        return dict(id=spec.task_id, campaign_id=campaign_id, stage_id=stage_id, key=key, kind=spec.kind,
                    app=spec.app, spec=spec.model_dump(mode="json", exclude={"driver"}), state=TaskState.READY,
                    priority=spec.priority, charged_failures=0, created_at=created, updated_at=created)

    def claim(self, campaign_id: int, stage_id: int, n: int, *, site: str, executor: str | None = None,
              driver: DriverRef | None = None) -> list[TaskSpec]:
        """Begin the next attempts of up to ``n`` READY tasks of a stage (highest priority, then oldest, first):
        the one way an attempt begins.

        Each task becomes SUBMITTED with a new open attempt row (numbered after its last one); the specs come back
        with that attempt number and ``driver`` set, ready to submit (the task row keeps its spec as planned). One transaction, fenced by ``driver``'s
        lease when given.

        Raises:
            LeaseLost: ``driver``'s lease was taken by another driver (nothing is written).
        """
        if n <= 0:
            return []
        with transaction(self.Session) as s:
            if driver is not None:
                self.renew_lease(campaign_id, driver.token, s)
            q = (select(m.Task.id, m.Task.spec).where(m.Task.campaign_id == campaign_id, m.Task.stage_id == stage_id,
                                                      m.Task.state == TaskState.READY)
                 .order_by(m.Task.priority.desc(), m.Task.created_at).limit(n).with_for_update())
            return self._begin(s, [(tid, spec) for tid, spec in s.connection().execute(q)], site, executor, driver)

    def begin_attempt(self, task_id: str, *, site: str, executor: str | None = None) -> int:
        """Begin the next attempt of one READY task (what :meth:`claim` does for a chosen task). Returns its number.

        Raises:
            KeyError: no such task.
            InvalidTransition: the task is not READY.
        """
        with transaction(self.Session) as s:
            row = s.execute(select(m.Task.id, m.Task.spec, m.Task.state).where(m.Task.id == task_id)
                            .with_for_update()).one_or_none()
            if row is None:
                raise KeyError(task_id)
            check_transition(row.state, TaskState.SUBMITTED)
            return self._begin(s, [(row.id, row.spec)], site, executor, None)[0].attempt

    @staticmethod
    def _begin(s: Session, rows: Sequence[tuple[str, dict[str, Any]]], site: str, executor: str | None,
               driver: DriverRef | None) -> list[TaskSpec]:
        if not rows:
            return []
        ids = [tid for tid, _ in rows]
        last: dict[str, int] = {tid: n for tid, n in s.connection().execute(
            select(m.Attempt.task_id, func.max(m.Attempt.number)).where(m.Attempt.task_id.in_(ids))
            .group_by(m.Attempt.task_id))}
        now = utcnow()
        specs, attempts = [], []
        for tid, spec_json in rows:
            spec = TaskSpec.model_validate({**spec_json, "attempt": (last.get(tid) or 0) + 1, "driver": driver})
            res = spec.resources
            attempts.append(dict(task_id=tid, number=spec.attempt, site=site, executor=executor, nodes=res.nodes,
                                 ranks=res.ranks, gpus=res.ranks * res.gpus_per_rank,
                                 cpus=res.ranks * res.cpus_per_rank, submitted_at=now))
            specs.append(spec)
        s.connection().execute(insert(ATTEMPTS), attempts)
        # the task keeps its spec as planned: its attempt rows number the tries
        for chunk in _chunks(ids):
            s.connection().execute(update(TASKS).where(m.Task.id.in_(chunk))
                                   .values(state=TaskState.SUBMITTED, updated_at=now))
        return specs

    def record(self, results: Sequence[TaskResult], *, policy: RetryPolicy | None = None,
               campaign_id: int | None = None, token: str | None = None) -> list[Recorded]:
        """Record attempts' outcomes and move their tasks on, in one transaction, committed before this returns
        (a caller that acts on them never acts on something unrecorded).

        A success makes the task DONE. A failure is charged by ``policy`` (app errors and kills cost a retry,
        lost nodes and walltime are free up to the policy's limit, bad input ends the task) and the task goes
        back to READY while the budget lasts, else FAILED. A result that is not the task's current open attempt
        (already recorded, or superseded) is stale: it changes no task and charges nothing (see :class:`Recorded`).

        Args:
            results: What came back, in order (the same task may appear once per attempt).
            policy: The retry policy (default :class:`RetryPolicy`'s defaults).
            campaign_id: With ``token``: the campaign whose lease fences this write.
            token: The recording driver's fencing token.

        Returns:
            One :class:`Recorded` per result, in order.

        Raises:
            KeyError: a result names a task that does not exist (nothing is written).
            LeaseLost: ``token`` no longer holds the campaign (nothing is written).
        """
        if not results:
            return []
        policy = policy or RetryPolicy()
        ids = list(dict.fromkeys(r.task_id for r in results))
        out: list[Recorded] = []
        with transaction(self.Session) as s:
            if token is not None and campaign_id is not None:
                self.renew_lease(campaign_id, token, s)
            tasks, h = self._tasks_and_attempts(s, ids)
            open_, latest, free_used = h.open, h.latest, h.free_used
            missing = [tid for tid in ids if tid not in tasks]
            if missing:
                raise KeyError(missing[0])
            now = utcnow()
            closing: list[dict[str, Any]] = []
            moved: dict[str, TaskRow] = {}
            for r in results:
                task = tasks[r.task_id]
                key = (task.id, r.attempt)
                if key not in open_:  # already recorded, or an attempt this database never began
                    out.append(Recorded(task.state, task, stale=True))
                    continue
                open_.discard(key)
                closing.append(self._closed_attempt(r, now))
                if r.attempt != latest[task.id] or task.state not in (TaskState.SUBMITTED, TaskState.RUNNING):
                    out.append(Recorded(task.state, task, stale=True))
                    continue
                self._move_task(task, r, policy, free_used.get(task.id, 0))
                if r.exit_cause in FREE_CAUSES:
                    free_used[task.id] = free_used.get(task.id, 0) + 1
                task.updated_at = now
                moved[task.id] = task
                out.append(Recorded(task.state, task))
            self._write_outcomes(s, closing, list(moved.values()), now)
        return out

    @staticmethod
    def _tasks_and_attempts(s: Session, ids: Sequence[str]) -> tuple[dict[str, TaskRow], _History]:
        """The tasks ``ids`` (locked) and what their attempts say: which are open, the latest number of each,
        and the free retries each has used (attempts closed by a stopped driver are not counted)."""
        tasks: dict[str, TaskRow] = {}
        h = _History()
        for chunk in _chunks(ids):
            tasks.update((t.id, t) for t in _task_rows(s, select(*_TASK_COLUMNS)
                                                       .where(m.Task.id.in_(chunk)).with_for_update()))
            q = select(m.Attempt.task_id, m.Attempt.number, m.Attempt.exit_cause, m.Attempt.error)
            for tid, n, cause, error in s.connection().execute(q.where(m.Attempt.task_id.in_(chunk))):
                h.latest[tid] = max(h.latest.get(tid, 0), n)
                if cause is None:
                    h.open.add((tid, n))
                elif ExitCause(cause) in FREE_CAUSES and error != DRIVER_STOPPED:
                    h.free_used[tid] = h.free_used.get(tid, 0) + 1
        return tasks, h

    @staticmethod
    def _write_outcomes(s: Session, closing: list[dict[str, Any]], moved: list[TaskRow], now: datetime) -> None:
        """Close the attempts (one executemany) and write the tasks' new states (another)."""
        if closing:
            s.connection().execute(
                update(ATTEMPTS).where(m.Attempt.task_id == bindparam("b_task"), m.Attempt.number == bindparam("b_number"))
                .values(executor=func.coalesce(bindparam("b_executor", type_=m.Attempt.executor.type),
                                               m.Attempt.executor),
                        started_at=func.coalesce(bindparam("b_started", type_=m.Attempt.started_at.type),
                                                 m.Attempt.submitted_at)), closing)
        if moved:
            s.connection().execute(update(TASKS).where(m.Task.id == bindparam("b_id")),
                                   [dict(b_id=t.id, state=t.state, result=t.result, charged_failures=t.charged_failures,
                                         updated_at=now) for t in moved])

    def record_attempt(self, result: TaskResult, *, policy: RetryPolicy | None = None) -> TaskState:
        """Record one attempt's outcome (see :meth:`record`). Returns the task's state after it."""
        return self.record([result], policy=policy)[0].state

    @staticmethod
    def _closed_attempt(result: TaskResult, now: datetime) -> dict[str, Any]:
        """The ``attempts`` values ``result`` sets when it closes its attempt (one executemany for a batch); the
        executor and start time stay as submitted where the worker did not report them."""
        row = dict(b_task=result.task_id, b_number=result.attempt, exit_cause=m.ExitCause(result.exit_cause.value),
                   returncode=result.returncode, error=result.error, host=result.host,
                   batch_job_id=result.batch_job_id, node_list=result.node_list, ended_at=result.ended_at or now,
                   stdout_path=result.stdout_path, stderr_path=result.stderr_path,
                   cpu_seconds=result.cpu_seconds)
        row["b_executor"], row["b_started"] = result.executor or None, result.started_at
        return row

    @staticmethod
    def _move_task(task: TaskRow, result: TaskResult, policy: RetryPolicy, free_used: int) -> None:
        """Apply one current attempt's outcome to its task (DONE, READY for a retry, or FAILED)."""
        if result.exit_cause is ExitCause.OK:
            task.state, task.result = TaskState.DONE, result.result
            return
        cost = policy.cost(result, free_used)
        if cost > 0:
            task.charged_failures += 1
        if cost == 0 or (cost == 1 and task.charged_failures <= policy.max_retries):
            task.state = TaskState.READY
        else:
            task.state = TaskState.FAILED
            task.result = result.result or {"status": "failed", "reason": result.exit_cause.value,
                                            "message": (result.error or "")[-2000:]}

    def get_task_by_key(self, campaign_id: int, key: str) -> TaskRow:
        """The task with ``key`` in the campaign.

        Raises:
            KeyError: no such task.
        """
        with self.Session() as s:
            rows = _task_rows(s, select(*_TASK_COLUMNS).where(m.Task.campaign_id == campaign_id, m.Task.key == key))
        if not rows:
            raise KeyError(key)
        return rows[0]

    def task(self, task_id: str) -> TaskRow | None:
        """A task by id, or None."""
        with self.Session() as s:
            rows = _task_rows(s, select(*_TASK_COLUMNS).where(m.Task.id == task_id))
        return rows[0] if rows else None

    def tasks(self, campaign_id: int, *, stage_id: int | None = None,
              states: Iterable[TaskState] | None = None, limit: int | None = None) -> list[TaskRow]:
        """Tasks of a campaign, optionally filtered by stage and state, highest priority (then oldest) first.

        Args:
            campaign_id: The campaign.
            stage_id: Only this stage's tasks.
            states: Only tasks in these states.
            limit: At most this many (the first in that order).
        """
        q = select(*_TASK_COLUMNS).where(m.Task.campaign_id == campaign_id)
        if stage_id is not None:
            q = q.where(m.Task.stage_id == stage_id)
        if states is not None:
            q = q.where(m.Task.state.in_(list(states)))
        q = q.order_by(m.Task.priority.desc(), m.Task.created_at)
        if limit is not None:
            q = q.limit(limit)
        with self.Session() as s:
            return _task_rows(s, q)

    def count_tasks(self, campaign_id: int, *, stage_id: int | None = None,
                    states: Iterable[TaskState] | None = None) -> int:
        """How many tasks :meth:`tasks` would return (without loading them)."""
        q = select(func.count()).select_from(m.Task).where(m.Task.campaign_id == campaign_id)
        if stage_id is not None:
            q = q.where(m.Task.stage_id == stage_id)
        if states is not None:
            q = q.where(m.Task.state.in_(list(states)))
        with self.Session() as s:
            return int(s.scalar(q) or 0)

    def open_attempts(self, campaign_id: int, stage_id: int) -> list[TaskSpec]:
        """The stage's attempts in flight, as the specs that were submitted (at the open attempt's number)."""
        q = (select(m.Task.spec, m.Attempt.number).join(m.Attempt, m.Attempt.task_id == m.Task.id)
             .where(m.Task.campaign_id == campaign_id, m.Task.stage_id == stage_id,
                    m.Task.state.in_([TaskState.SUBMITTED, TaskState.RUNNING]), m.Attempt.exit_cause.is_(None)))
        with self.Session() as s:
            return [TaskSpec.model_validate({**spec, "attempt": n}) for spec, n in s.execute(q)]

    def successful_attempts(self, campaign_id: int, stage_id: int) -> dict[str, int]:
        """``{task id: number}`` of the successful attempt of each of the stage's DONE tasks."""
        q = (select(m.Attempt.task_id, func.max(m.Attempt.number)).join(m.Task, m.Attempt.task_id == m.Task.id)
             .where(m.Task.campaign_id == campaign_id, m.Task.stage_id == stage_id,
                    m.Attempt.exit_cause == m.ExitCause.OK).group_by(m.Attempt.task_id))
        with self.Session() as s:
            return {tid: int(n) for tid, n in s.execute(q)}

    def failure_summary(self, campaign_id: int, stage_id: int) -> str:
        """Why a stage failed, from its FAILED tasks: how many, and the first one's cause and last line of error."""
        failed = self.tasks(campaign_id, stage_id=stage_id, states=[TaskState.FAILED])
        if not failed:
            return "the stage reported failure without a failed task"
        first = failed[0].result or {}
        lines = str(first.get("message") or "").strip().splitlines()
        why = f"{first.get('reason', 'failed')}" + (f": {lines[-1]}" if lines else "")
        return f"{len(failed)} task(s) failed; first: {failed[0].key}: {why}"[:500]

    def stage_failure(self, stage_id: int) -> str:
        """The failure reason recorded on a stage ("" when none)."""
        with self.Session() as s:
            row = s.get(m.Stage, stage_id)
            return str((row.config or {}).get("failure") or "") if row is not None else ""

    def fail_task(self, task_id: str, reason: str) -> None:
        """Mark a task FAILED without an attempt (e.g. its inputs are missing)."""
        with transaction(self.Session) as s:
            task = s.get(m.Task, task_id, with_for_update=True)
            if task is not None and task.state not in (TaskState.DONE, TaskState.FAILED):
                task.state = TaskState.FAILED
                task.result = {"status": "failed", "reason": reason}

    def requeue_lost(self, campaign_id: int, *, stage_id: int | None = None,
                     keep: Iterable[str] = ()) -> list[str]:
        """After a driver restart: SUBMITTED/RUNNING tasks whose attempt has no outcome go back to READY.

        Their open attempt is closed as ``node_lost`` with :data:`DRIVER_STOPPED` (never charged, and not counted
        against the free retries).

        Args:
            campaign_id: The campaign.
            stage_id: Only this stage's tasks (default: the whole campaign).
            keep: Task ids left alone (attempts the new driver adopted because they still run).

        Returns the ids of the re-queued tasks.
        """
        kept = set(keep)
        with transaction(self.Session) as s:
            q = select(m.Task).where(m.Task.campaign_id == campaign_id,
                                     m.Task.state.in_([TaskState.SUBMITTED, TaskState.RUNNING]))
            if stage_id is not None:
                q = q.where(m.Task.stage_id == stage_id)
            rows = [t for t in s.scalars(q) if t.id not in kept]
            for task in rows:
                for att in s.scalars(select(m.Attempt).where(m.Attempt.task_id == task.id,
                                                             m.Attempt.exit_cause.is_(None))):
                    att.exit_cause = m.ExitCause.NODE_LOST
                    att.error = DRIVER_STOPPED
                    att.ended_at = utcnow()
                task.state = TaskState.READY
            return [t.id for t in rows]


def _aware(ts: datetime) -> datetime:
    """``ts`` as an aware UTC datetime (SQLite gives naive ones back)."""
    from datetime import UTC

    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def current_user() -> str:
    """The user name (environment first, then the password database)."""
    return os.environ.get("USER") or getpass.getuser()
