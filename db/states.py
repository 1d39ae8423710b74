"""Task states and attempt exit causes: the one definition the database columns and the steering code share.

Standard library only, so that ``campaign.tasks`` (the message format workers import) can use it without
SQLAlchemy. The allowed transitions live with the steering code (:data:`campaign.tasks.TRANSITIONS`).
"""

from __future__ import annotations

import enum


class TaskState(enum.StrEnum):
    """States of a task: CREATED→READY→SUBMITTED→RUNNING→DONE|FAILED|CANCELLED."""

    CREATED = "CREATED"
    READY = "READY"
    SUBMITTED = "SUBMITTED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class ExitCause(enum.StrEnum):
    """Why an attempt ended."""

    OK = "ok"
    ERROR = "error"  # the app failed (bad input, NaN loss, exception): charged against the retry budget
    WALLTIME = "walltime"  # the batch job ran out of time: retried without charge
    NODE_LOST = "node_lost"  # the worker/node disappeared: retried without charge
    KILLED = "killed"  # killed by a signal (a user, the scheduler)
    OOM = "oom"  # out of memory: the kernel's OOM killer (cgroup counter) or the app's host/device allocation
