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
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import campaign
from campaign.tasks import ExitCause, TaskResult, TaskSpec, TaskState, check_transition, utcnow
from db import models as m
from db.bulk import insert_rows, update_rows
from db.engine import session_factory, transaction
from models.atomic_files import sha256_file


class CampaignConflict(ValueError):
    """A campaign of that name exists with a different recipe."""


#: Ids per ``IN (...)`` list (well under SQLite's and PostgreSQL's bound-parameter limits).
IN_CHUNK = 500

_T = TypeVar("_T")


def _chunks(items: Sequence[_T], size: int = IN_CHUNK) -> Iterator[Sequence[_T]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@dataclass(frozen=True)
class AttemptOutcome:
    """One attempt's outcome to record (see :meth:`Ledger.record_attempts`).

    Attributes:
        result: What the worker (or the dispatcher, for a lost attempt) returned.
        final: Whether the dispatcher is done with this task (otherwise it retries it itself and the task stays
            SUBMITTED).
        requeue: After a final failure, put the task back to READY for the steering loop to re-submit (for
            dispatchers that do not retry), within the charged-failure and attempt budgets.
    """

    result: TaskResult
    final: bool = True
    requeue: bool = False


@dataclass(slots=True)
class TaskRow:
    """A ``tasks`` row as plain values, read with one Core select (no ORM identity map, instrumentation or
    per-row state): what :meth:`Ledger.tasks` returns and what stages are handed. Changing it changes nothing
    in the database."""

    id: str
    campaign_id: int
    stage_id: int
    key: str
    kind: str
    app: str
    spec: dict[str, Any]
    state: TaskState
    priority: int
    result: dict[str, Any] | None
    charged_failures: int
    created_at: datetime
    updated_at: datetime

    def with_state(self, state: TaskState, charged_failures: int) -> TaskRow:
        """A copy with the task's state and charged failures as the database holds them now (what
        ``dataclasses.replace`` does, at a fifth of its cost: the steering loop makes one per result)."""
        return TaskRow(self.id, self.campaign_id, self.stage_id, self.key, self.kind, self.app, self.spec, state,
                       self.priority, self.result, charged_failures, self.created_at, self.updated_at)


_TASK_COLUMNS = tuple(m.Task.__table__.c[name] for name in TaskRow.__slots__)  # type: ignore[attr-defined]


def _task_rows(s: Session, q: Any) -> list[TaskRow]:
    """``q`` (a select of :data:`_TASK_COLUMNS`) as :class:`TaskRow` s."""
    return [TaskRow(*row) for row in s.connection().execute(q)]


@dataclass(frozen=True)
class CreatedAndBegun:
    """What :meth:`Ledger.create_and_begin` did.

    Attributes:
        begun: The rows of the tasks whose first attempt it began (SUBMITTED), in planned order.
        ready: The rows of the other new tasks (READY), in planned order.
        existing: How many of the keys were in the campaign already (left alone).
    """

    begun: list[TaskRow]
    ready: list[TaskRow]
    existing: int


@dataclass(frozen=True)
class Recorded:
    """What recording one :class:`AttemptOutcome` did: the task's new state and the task row after it."""

    state: TaskState
    task: TaskRow


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


class Ledger:
    """Typed write API over the campaign database (used by the steering process only)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.Session = session_factory(engine)

    # ------------------------------------------------------------------------------------------ campaigns
    def open_campaign(self, *, name: str, recipe_text: str, recipe_hash: str, site: str,
                      recipe_path: str | None = None, profile: str | None = None,
                      resume_only: bool = False) -> m.Campaign:
        """Create the campaign row, or return the existing one when the recipe is the same (a resume).

        Raises:
            CampaignConflict: a campaign of this name exists with a different recipe hash.
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
            else:
                if row.recipe_hash != recipe_hash:
                    raise CampaignConflict(
                        f"campaign {name!r} already exists with a different recipe (hash {row.recipe_hash[:12]} "
                        f"vs {recipe_hash[:12]}); rename the campaign or use `campaign resume {name}`"
                    )
                row.status = "running"
                row.ended_at = None
            return row

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

    def finish_stage(self, stage_id: int, status: str) -> None:
        """Mark a stage finished."""
        with transaction(self.Session) as s:
            s.execute(update(m.Stage).where(m.Stage.id == stage_id).values(status=status, ended_at=utcnow()))

    # ---------------------------------------------------------------------------------------------- tasks
    def create_task(self, campaign_id: int, stage_id: int, key: str, spec: TaskSpec) -> m.Task:
        """Create a task in READY state, or return the existing task with the same key (idempotent)."""
        with transaction(self.Session) as s:
            existing = s.scalar(select(m.Task).where(m.Task.campaign_id == campaign_id, m.Task.key == key))
            if existing is not None:
                return existing
            row = m.Task(**self._task_values(campaign_id, stage_id, key, spec, utcnow(), 0))
            s.add(row)
            try:
                s.flush()
            except IntegrityError:  # pragma: no cover - another writer raced us; the key wins
                s.rollback()
                return self.get_task_by_key(campaign_id, key)
            return row

    def create_tasks(self, campaign_id: int, stage_id: int,
                     planned: Sequence[tuple[str, TaskSpec]], *, returning: bool = True) -> list[m.Task]:
        """Create many tasks in one transaction (idempotent by key, like :meth:`create_task`).

        Args:
            campaign_id: The campaign.
            stage_id: The stage the new tasks belong to.
            planned: ``(key, spec)`` pairs; a key already in the campaign (or repeated) keeps its first task.
            returning: Read the rows back (``False``: the caller only needs them to exist; saves a query that
                decodes every spec).

        Returns:
            One task row per distinct key, in the order of ``planned`` (empty when ``returning`` is false).
        """
        keys, first = self._distinct(planned)
        if not keys:
            return []
        try:
            with transaction(self.Session) as s:
                _, new = self._new_task_values(s, campaign_id, stage_id, keys, first)
                if new:  # executemany: one statement, not one ORM object per row
                    insert_rows(s, m.Task.__table__, new)
                if not returning:
                    return []
                rows: dict[str, m.Task] = {}
                for chunk in _chunks(keys):
                    q = select(m.Task).where(m.Task.campaign_id == campaign_id, m.Task.key.in_(chunk))
                    rows.update((t.key, t) for t in s.scalars(q))
                return [rows[k] for k in keys]
        except IntegrityError:  # pragma: no cover - another writer raced us: fall back to one key at a time
            return [self.create_task(campaign_id, stage_id, k, first[k]) for k in keys]

    def create_and_begin(self, campaign_id: int, stage_id: int, planned: Sequence[tuple[str, TaskSpec]], *,
                         begin: int, site: str, executor: str | None = None) -> CreatedAndBegun:
        """Create tasks and begin the first attempts of up to ``begin`` of the new ones, in one transaction.

        What :meth:`create_tasks` then :meth:`begin_attempts` would write, without reading back what this
        transaction has just written: a new task's first attempt needs neither its state nor its past attempts.
        Keys already in the campaign (or repeated) are left as they are, like :meth:`create_tasks`.

        Args:
            campaign_id: The campaign.
            stage_id: The stage the new tasks belong to.
            planned: ``(key, spec)`` pairs, in the order to begin them.
            begin: How many of the new tasks to begin (the first ones); the others are created READY.
            site: Recorded on each attempt begun.
            executor: Recorded on each attempt begun.

        Returns:
            The rows of the tasks begun (SUBMITTED, their spec at attempt 1) and of those created READY, and how
            many keys existed already.
        """
        keys, first = self._distinct(planned)
        if not keys:
            return CreatedAndBegun([], [], 0)
        try:
            with transaction(self.Session) as s:
                known, new = self._new_task_values(s, campaign_id, stage_id, keys, first)
                begun = new[:max(0, begin)]
                attempts = []
                for row in begun:  # submitted when created (the spec is this row's own dump)
                    row["spec"]["attempt"] = 1
                    row["state"] = TaskState.SUBMITTED
                    attempts.append(self._attempt_values(row["id"], 1, row["spec"], site, executor, row["updated_at"]))
                if new:
                    insert_rows(s, m.Task.__table__, new)
                if attempts:
                    insert_rows(s, m.Attempt.__table__, attempts)
        except IntegrityError:  # pragma: no cover - another writer raced us: create, then begin what is READY
            self.create_tasks(campaign_id, stage_id, planned, returning=False)
            return CreatedAndBegun([], [], len(keys))
        rows = [TaskRow(**{name: row.get(name) for name in TaskRow.__slots__}) for row in new]  # type: ignore[attr-defined]
        return CreatedAndBegun(rows[:len(begun)], rows[len(begun):], len(known))

    @staticmethod
    def _distinct(planned: Sequence[tuple[str, TaskSpec]]) -> tuple[list[str], dict[str, TaskSpec]]:
        """The distinct keys of ``planned`` in order, and each key's spec (the first of a repeated key wins)."""
        return list(dict.fromkeys(k for k, _ in planned)), dict(reversed(planned))

    def _new_task_values(self, s: Session, campaign_id: int, stage_id: int, keys: Sequence[str],
                         first: Mapping[str, TaskSpec]) -> tuple[set[str], list[dict[str, Any]]]:
        """Which of ``keys`` the campaign has tasks for, and the column values of a new READY task for each other
        key (all created now, in the order of ``keys``)."""
        known: set[str] = set()
        for chunk in _chunks(keys):
            known.update(s.scalars(select(m.Task.key).where(m.Task.campaign_id == campaign_id,
                                                            m.Task.key.in_(chunk))))
        now = utcnow()
        return known, [self._task_values(campaign_id, stage_id, key, first[key], now, i)
                       for i, key in enumerate(k for k in keys if k not in known)]

    @staticmethod
    def _task_values(campaign_id: int, stage_id: int, key: str, spec: TaskSpec, now: datetime,
                     i: int) -> dict[str, Any]:
        """A new READY task's column values; ``created_at`` is ``now`` plus ``i`` microseconds, so that tasks of
        equal priority created together keep their planned order (:meth:`tasks`)."""
        return dict(id=spec.task_id, campaign_id=campaign_id, stage_id=stage_id, key=key, kind=spec.kind,
                    app=spec.app, spec=spec.model_dump(mode="json"), state=TaskState.READY, priority=spec.priority,
                    charged_failures=0, created_at=now + timedelta(microseconds=i), updated_at=now)

    @staticmethod
    def _attempt_values(task_id: str, number: int, spec: Mapping[str, Any], site: str, executor: str | None,
                        now: datetime) -> dict[str, Any]:
        """A new (open) attempt's column values: the resources it holds come from the task's spec."""
        res = spec.get("resources", {})
        nodes = int(res.get("nodes", 1))
        ranks = nodes * int(res.get("ranks_per_node", 1))
        return dict(task_id=task_id, number=number, site=site, executor=executor, nodes=nodes, ranks=ranks,
                    gpus=ranks * int(res.get("gpus_per_rank", 0)), cpus=ranks * int(res.get("cpus_per_rank", 1)),
                    submitted_at=now)

    def get_task_by_key(self, campaign_id: int, key: str) -> m.Task:
        """The task with ``key`` in the campaign."""
        with self.Session() as s:
            row = s.scalar(select(m.Task).where(m.Task.campaign_id == campaign_id, m.Task.key == key))
            if row is None:
                raise KeyError(key)
            return row

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

    def set_state(self, task_id: str, new: TaskState) -> None:
        """Move a task along the state machine (raises ``InvalidTransition`` otherwise)."""
        with transaction(self.Session) as s:
            row = s.get(m.Task, task_id, with_for_update=True)
            if row is None:
                raise KeyError(task_id)
            if row.state != new:
                check_transition(row.state, new)
                row.state = new

    def begin_attempt(self, task_id: str, *, site: str, executor: str | None = None) -> int:
        """Record a submission: a new attempt row and the task SUBMITTED. Returns the attempt number.

        Raises:
            KeyError: no such task.
            InvalidTransition: the task cannot be submitted (it is not READY).
        """
        return self._begin(task_ids=[task_id], site=site, executor=executor, strict=True)[task_id]

    def begin_attempts(self, task_ids: Sequence[str], *, site: str, executor: str | None = None,
                       specs: Mapping[str, dict[str, Any]] | None = None,
                       session: Session | None = None) -> dict[str, int]:
        """Record many submissions in one transaction (what the steering loop does per batch it submits).

        Tasks that are no longer READY (or no longer exist) are left alone and missing from the answer.

        Args:
            task_ids: The tasks to submit.
            site: Recorded on each attempt.
            executor: Recorded on each attempt.
            specs: The tasks' specs as the caller read them (:attr:`TaskRow.spec`), so that only their states
                are read here; a task's spec is never changed but by this method, under the same lock.
            session: Write in this (outer) transaction (see :meth:`unit_of_work`) instead of one of its own.

        Returns:
            ``{task_id: attempt number}`` of the attempts begun.
        """
        return self._begin(task_ids=task_ids, site=site, executor=executor, strict=False, known=specs,
                           session=session)

    def _begin(self, *, task_ids: Sequence[str], site: str, executor: str | None,
               strict: bool, known: Mapping[str, dict[str, Any]] | None = None,
               session: Session | None = None) -> dict[str, int]:
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return {}
        begun: dict[str, int] = {}
        with self.unit_of_work(session) as s:
            rows: dict[str, tuple[TaskState, dict[str, Any]]] = {}
            last: dict[str, int] = {}
            for chunk in _chunks(ids):
                # Core rows (s.connection()): column tuples need no ORM loading machinery; a spec the caller
                # holds is not read (and decoded) again
                if known is not None and all(tid in known for tid in chunk):
                    q = select(m.Task.id, m.Task.state).where(m.Task.id.in_(chunk)).with_for_update()
                    rows.update((tid, (TaskState(state), known[tid])) for tid, state in s.connection().execute(q))
                else:
                    q = select(m.Task.id, m.Task.state, m.Task.spec).where(m.Task.id.in_(chunk)).with_for_update()
                    rows.update((tid, (TaskState(state), spec)) for tid, state, spec in s.connection().execute(q))
                last.update((tid, n) for tid, n in s.connection().execute(
                    select(m.Attempt.task_id, func.max(m.Attempt.number))
                    .where(m.Attempt.task_id.in_(chunk)).group_by(m.Attempt.task_id)))
            now = utcnow()
            attempts: list[dict[str, Any]] = []
            tasks: list[dict[str, Any]] = []
            for task_id in ids:
                if task_id not in rows:
                    if strict:
                        raise KeyError(task_id)
                    continue
                state, spec = rows[task_id]
                if strict:
                    check_transition(state, TaskState.SUBMITTED)
                elif state != TaskState.READY:
                    continue
                n = (last.get(task_id) or 0) + 1
                attempts.append(self._attempt_values(task_id, n, spec, site, executor, now))
                tasks.append(dict(id=task_id, state=TaskState.SUBMITTED, spec={**spec, "attempt": n}, updated_at=now))
                begun[task_id] = n
            if attempts:  # executemany: one statement per batch, not one ORM object per row
                insert_rows(s, m.Attempt.__table__, attempts)
                update_rows(s, m.Task.__table__, tasks)
        return begun

    def record_attempt(self, result: TaskResult, *, final: bool, requeue: bool = False,
                       max_charged: int = 2, max_attempts: int = 8) -> TaskState:
        """Write one attempt's outcome and move the task on.

        Args:
            result: What the worker returned.
            final: Whether the dispatcher is done with this task (otherwise it retries it itself and the task
                stays SUBMITTED).
            requeue: After a final failure, put the task back to READY for the steering loop to re-submit (for
                dispatchers that do not retry), while fewer than ``max_charged`` charged failures (cause
                ``error``/``killed``; walltime and node loss are free) and ``max_attempts`` attempts were spent.
            max_charged: Charged failures allowed before the task FAILS (with ``requeue``).
            max_attempts: Attempts allowed in all (with ``requeue``).

        Returns:
            The task's new state: DONE, FAILED, READY or SUBMITTED.
        """
        outcome = AttemptOutcome(result, final=final, requeue=requeue)
        return self.record_attempts([outcome], max_charged=max_charged, max_attempts=max_attempts)[0].state

    def record_attempts(self, outcomes: Sequence[AttemptOutcome], *, max_charged: int = 2,
                        max_attempts: int = 8, rows: Mapping[str, TaskRow] | None = None,
                        open_attempts: Collection[tuple[str, int]] = (),
                        session: Session | None = None) -> list[Recorded]:
        """Write many attempts' outcomes in one transaction, in order (see :meth:`record_attempt`).

        The same task may appear more than once (an attempt its dispatcher retried, then the final one). All
        outcomes are committed together before this returns, so a caller that acts on them afterwards never
        acts on something unrecorded.

        Args:
            outcomes: What to record.
            max_charged: See :meth:`record_attempt`.
            max_attempts: See :meth:`record_attempt`.
            rows: Task rows the caller holds (as :meth:`tasks` returned them): only their state and charged
                failures are read here (under the lock), the rest is taken from these; they are not changed.
            open_attempts: ``(task id, attempt number)`` of attempts the caller began (their rows exist): where
                every outcome of a batch names one of these, the attempt rows are not read back.
            session: Write in this (outer) transaction (see :meth:`unit_of_work`): the outcomes are committed
                with it, not when this returns.

        Returns:
            One :class:`Recorded` per outcome, in order (its ``task`` is the row as committed, detached).

        Raises:
            KeyError: an outcome names a task that does not exist (nothing is written).
        """
        if not outcomes:
            return []
        ids = list(dict.fromkeys(o.result.task_id for o in outcomes))
        out: list[Recorded] = []
        all_open = all((o.result.task_id, o.result.attempt) in open_attempts for o in outcomes)
        with self.unit_of_work(session) as s:
            tasks: dict[str, TaskRow] = {}
            attempts: dict[tuple[str, int], str] = {}  # (task, number) -> site, of the rows read
            for chunk in _chunks(ids):
                if rows is not None and all(tid in rows for tid in chunk):
                    q = select(m.Task.id, m.Task.state, m.Task.charged_failures).where(m.Task.id.in_(chunk))
                    tasks.update((tid, rows[tid].with_state(TaskState(state), charged))
                                 for tid, state, charged in s.connection().execute(q.with_for_update()))
                else:
                    tasks.update((t.id, t) for t in _task_rows(s, select(*_TASK_COLUMNS)
                                                               .where(m.Task.id.in_(chunk)).with_for_update()))
                if all_open:
                    continue  # the caller began every attempt recorded here: they all exist
                q = select(m.Attempt.task_id, m.Attempt.number, m.Attempt.site).where(m.Attempt.task_id.in_(chunk))
                attempts.update(((tid, n), site) for tid, n, site in s.connection().execute(q))
            missing = [tid for tid in ids if tid not in tasks]
            if missing:
                raise KeyError(missing[0])
            changed: dict[tuple[str, int], tuple[str | None, dict[str, Any]]] = {}  # (site of a new row, closing)
            now = utcnow()
            for o in outcomes:
                result = o.result
                task = tasks[result.task_id]
                key = (task.id, result.attempt)
                site = None
                if key not in open_attempts and key not in attempts:
                    # an attempt retried inside the dispatcher (Parsl retry): it gets its own row, at the site of
                    # the task's latest attempt
                    prev = max(((n, a) for (tid, n), a in attempts.items() if tid == task.id), default=None)
                    site = attempts[key] = prev[1] if prev else "unknown"
                changed[key] = (site, self._closed_attempt(result, now))
                self._move_task(task, o, max_charged=max_charged, max_attempts=max_attempts)
                task.updated_at = now
                out.append(Recorded(TaskState(task.state), task))
            # a new row (a retried attempt) gets every column, an open one only those its closing sets (executor
            # and start as the worker reported them, else as they were at submission)
            inserts = [{"task_id": tid, "number": n, "site": site, "submitted_at": now,
                        **row, "started_at": row["started_at"] or now}
                       for (tid, n), (site, row) in changed.items() if site is not None]
            updates = [{"task_id": tid, "number": n, **row}
                       for (tid, n), (site, row) in changed.items() if site is None]
            if inserts:
                insert_rows(s, m.Attempt.__table__, inserts)
            if updates:
                update_rows(s, m.Attempt.__table__, updates, key=("task_id", "number"),
                            fallback={"executor": "executor", "started_at": "submitted_at"})
            update_rows(s, m.Task.__table__, [dict(id=t.id, state=t.state, result=t.result,
                                                     charged_failures=t.charged_failures, updated_at=now)
                                                for t in tasks.values()])
        return out

    @staticmethod
    def _closed_attempt(result: TaskResult, now: Any) -> dict[str, Any]:
        """The columns ``result`` sets when it closes an attempt (same keys for every row: one executemany);
        ``executor`` and ``started_at`` are ``None`` where the worker did not report them."""
        return dict(
            exit_cause=m.ExitCause(result.exit_cause.value), returncode=result.returncode, error=result.error,
            host=result.host, batch_job_id=result.batch_job_id, executor=result.executor or None,
            started_at=result.started_at, ended_at=result.ended_at or now,
            stdout_path=result.stdout_path, stderr_path=result.stderr_path,
        )

    @staticmethod
    def _move_task(task: TaskRow, o: AttemptOutcome, *, max_charged: int, max_attempts: int) -> None:
        result = o.result
        if result.exit_cause is ExitCause.OK:
            task.state = TaskState.DONE
            task.result = result.result
            return
        if result.exit_cause in (ExitCause.ERROR, ExitCause.KILLED):
            task.charged_failures += 1
        if not o.final:
            return  # the dispatcher retries; the task stays SUBMITTED
        if o.requeue and task.charged_failures <= max_charged and result.attempt < max_attempts:
            task.state = TaskState.READY
        else:
            task.state = TaskState.FAILED
            task.result = result.result or {"status": "failed", "reason": result.exit_cause.value,
                                            "message": (result.error or "")[-2000:]}

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

        Their open attempt is closed as ``node_lost`` (the driver that held the future is gone).

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
                    att.error = "the steering process stopped while this attempt was in flight"
                    att.ended_at = utcnow()
                task.state = TaskState.READY
            return [t.id for t in rows]

    # ----------------------------------------------------------------------------------- provenance rows
    @contextmanager
    def unit_of_work(self, session: Session | None = None) -> Iterator[Session]:
        """One transaction for several ledger writes (pass the session to each): all are recorded or none.
        With ``session`` given, that (outer) transaction is used."""
        if session is not None:
            yield session
        else:
            with transaction(self.Session) as s:
                yield s

    def add_artifact(self, path: str | Path, kind: str, *, task_id: str | None = None,
                     sha256: str | None = None, session: Session | None = None) -> m.Artifact:
        """Record a file by content (idempotent on path + sha256). Hashes the file if ``sha256`` is None."""
        p = Path(path)
        digest = sha256 or sha256_file(p)
        with self.unit_of_work(session) as s:
            row = s.scalar(select(m.Artifact).where(m.Artifact.path == str(p), m.Artifact.sha256 == digest))
            if row is None:
                row = m.Artifact(path=str(p), kind=kind, sha256=digest, bytes=p.stat().st_size, task_id=task_id)
                s.add(row)
                s.flush()
            return row

    def add_dataset(self, **fields: Any) -> m.Dataset:
        """Record a preprocessed dataset (idempotent on name + content hash)."""
        with transaction(self.Session) as s:
            row = s.scalar(select(m.Dataset).where(m.Dataset.name == fields["name"],
                                                   m.Dataset.content_hash == fields["content_hash"]))
            if row is None:
                row = m.Dataset(**fields)
                s.add(row)
                s.flush()
            return row

    def link(self, kind: str, src: tuple[str, Any], dst: tuple[str, Any], campaign_id: int | None = None, *,
             session: Session | None = None) -> None:
        """Record a typed lineage edge ``src --kind--> dst`` (idempotent). Endpoints are ``(entity_kind, id)``."""
        with self.unit_of_work(session) as s:
            key = dict(kind=m.LineageKind(kind), src_kind=m.EntityKind(src[0]), src_id=str(src[1]),
                       dst_kind=m.EntityKind(dst[0]), dst_id=str(dst[1]))
            exists = s.scalar(select(m.Lineage.id).filter_by(**key))
            if exists is None:
                s.add(m.Lineage(campaign_id=campaign_id, **key))

    def add_metrics(self, task_id: str, rows: Sequence[dict[str, Any]], *, replace: bool = False,
                    session: Session | None = None) -> int:
        """Record per-epoch metrics ``{epoch, head, split, name, value}`` of a run. Returns rows written.

        ``replace``: first remove the task's earlier rows (recording a run's metrics again is then idempotent).
        """
        with self.unit_of_work(session) as s:
            if replace:
                s.execute(delete(m.Metric).where(m.Metric.task_id == task_id))
            s.add_all(m.Metric(task_id=task_id, epoch=int(r["epoch"]), head=str(r["head"]), split=str(r["split"]),
                               name=str(r["name"]), value=float(r["value"])) for r in rows)
        return len(rows)


def current_user() -> str:
    """The user name (environment first, then the password database)."""
    return os.environ.get("USER") or getpass.getuser()
