"""The campaign ledger: the one writer of the campaign database.

The steering process records everything through this class: campaigns, stages, tasks and their state machine,
attempts with their exit causes, datasets, artifacts, trials, models, metrics, screening hits and typed lineage.
A result is written (and committed) before the steering loop acts on it, so nothing acknowledged is lost.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError

import campaign
from campaign.tasks import ExitCause, TaskResult, TaskSpec, TaskState, check_transition, utcnow
from db import models as m
from db.engine import session_factory, transaction


class CampaignConflict(ValueError):
    """A campaign of that name exists with a different recipe."""


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


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


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
            row = m.Task(id=spec.task_id, campaign_id=campaign_id, stage_id=stage_id, key=key, kind=spec.kind,
                         app=spec.app, spec=spec.model_dump(mode="json"), state=TaskState.READY,
                         priority=spec.priority)
            s.add(row)
            try:
                s.flush()
            except IntegrityError:  # pragma: no cover - another writer raced us; the key wins
                s.rollback()
                return self.get_task_by_key(campaign_id, key)
            return row

    def get_task_by_key(self, campaign_id: int, key: str) -> m.Task:
        """The task with ``key`` in the campaign."""
        with self.Session() as s:
            row = s.scalar(select(m.Task).where(m.Task.campaign_id == campaign_id, m.Task.key == key))
            if row is None:
                raise KeyError(key)
            return row

    def tasks(self, campaign_id: int, *, stage_id: int | None = None,
              states: Iterable[TaskState] | None = None) -> list[m.Task]:
        """Tasks of a campaign, optionally filtered by stage and state."""
        q = select(m.Task).where(m.Task.campaign_id == campaign_id)
        if stage_id is not None:
            q = q.where(m.Task.stage_id == stage_id)
        if states is not None:
            q = q.where(m.Task.state.in_(list(states)))
        with self.Session() as s:
            return list(s.scalars(q.order_by(m.Task.priority.desc(), m.Task.created_at)))

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
        """Record a submission: a new attempt row and the task SUBMITTED. Returns the attempt number."""
        with transaction(self.Session) as s:
            row = s.get(m.Task, task_id, with_for_update=True)
            if row is None:
                raise KeyError(task_id)
            check_transition(row.state, TaskState.SUBMITTED)
            n = (s.scalar(select(func.max(m.Attempt.number)).where(m.Attempt.task_id == task_id)) or 0) + 1
            res = row.spec.get("resources", {})
            ranks = int(res.get("nodes", 1)) * int(res.get("ranks_per_node", 1))
            s.add(m.Attempt(task_id=task_id, number=n, site=site, executor=executor,
                            nodes=int(res.get("nodes", 1)), ranks=ranks,
                            gpus=ranks * int(res.get("gpus_per_rank", 0)),
                            cpus=ranks * int(res.get("cpus_per_rank", 1))))
            row.state = TaskState.SUBMITTED
            spec = dict(row.spec)
            spec["attempt"] = n
            row.spec = spec
            return n

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
        with transaction(self.Session) as s:
            task = s.get(m.Task, result.task_id, with_for_update=True)
            if task is None:
                raise KeyError(result.task_id)
            att = s.scalar(select(m.Attempt).where(m.Attempt.task_id == result.task_id,
                                                   m.Attempt.number == result.attempt))
            if att is None:  # an attempt retried inside the dispatcher (Parsl retry): it gets its own row
                att = m.Attempt(task_id=task.id, number=result.attempt, site=self._site_of(s, task.id))
                s.add(att)
            att.exit_cause = m.ExitCause(result.exit_cause.value)
            att.returncode = result.returncode
            att.error = result.error
            att.host = result.host
            att.batch_job_id = result.batch_job_id
            att.executor = result.executor or att.executor
            att.started_at = result.started_at or att.submitted_at
            att.ended_at = result.ended_at or utcnow()
            att.stdout_path = result.stdout_path
            att.stderr_path = result.stderr_path
            if result.exit_cause is ExitCause.OK:
                task.state = TaskState.DONE
                task.result = result.result
            else:
                if result.exit_cause in (ExitCause.ERROR, ExitCause.KILLED):
                    task.charged_failures += 1
                if not final:
                    pass  # the dispatcher retries; the task stays SUBMITTED
                elif requeue and task.charged_failures <= max_charged and result.attempt < max_attempts:
                    task.state = TaskState.READY
                else:
                    task.state = TaskState.FAILED
                    task.result = result.result or {"status": "failed", "reason": result.exit_cause.value,
                                                    "message": (result.error or "")[-2000:]}
            return TaskState(task.state)

    @staticmethod
    def _site_of(s: Any, task_id: str) -> str:
        prev = s.scalar(select(m.Attempt.site).where(m.Attempt.task_id == task_id).order_by(m.Attempt.number.desc()))
        return prev or "unknown"

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
    def add_artifact(self, path: str | Path, kind: str, *, task_id: str | None = None,
                     sha256: str | None = None) -> m.Artifact:
        """Record a file by content (idempotent on path + sha256). Hashes the file if ``sha256`` is None."""
        p = Path(path)
        digest = sha256 or sha256_file(p)
        with transaction(self.Session) as s:
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

    def link(self, kind: str, src: tuple[str, Any], dst: tuple[str, Any], campaign_id: int | None = None) -> None:
        """Record a typed lineage edge ``src --kind--> dst`` (idempotent). Endpoints are ``(entity_kind, id)``."""
        with transaction(self.Session) as s:
            key = dict(kind=m.LineageKind(kind), src_kind=m.EntityKind(src[0]), src_id=str(src[1]),
                       dst_kind=m.EntityKind(dst[0]), dst_id=str(dst[1]))
            exists = s.scalar(select(m.Lineage.id).filter_by(**key))
            if exists is None:
                s.add(m.Lineage(campaign_id=campaign_id, **key))

    def add_metrics(self, task_id: str, rows: Sequence[dict[str, Any]]) -> int:
        """Record per-epoch metrics ``{epoch, head, split, name, value}`` of a run. Returns rows written."""
        with transaction(self.Session) as s:
            s.add_all(m.Metric(task_id=task_id, epoch=int(r["epoch"]), head=str(r["head"]), split=str(r["split"]),
                               name=str(r["name"]), value=float(r["value"])) for r in rows)
        return len(rows)


def current_user() -> str:
    """The user name (environment first, then the password database)."""
    return os.environ.get("USER") or getpass.getuser()
