"""The one message format between the steering process and the workers.

A :class:`TaskSpec` goes out (by value), a :class:`TaskResult` comes back (by value). Workers never open the
campaign database; the steering process is its only writer. Both are pydantic models so that they serialize
to JSON for Parsl, Globus Compute and files alike.

This module imports neither torch, parsl nor sqlalchemy (an import-linter contract checks it).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from db.states import ExitCause, TaskState

#: The task state machine: CREATED→READY→SUBMITTED→RUNNING→DONE|FAILED|CANCELLED. A SUBMITTED or RUNNING task
#: may go back to READY when its attempt is lost and it is retried (each try is its own attempt row).
TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.CREATED: frozenset({TaskState.READY, TaskState.CANCELLED}),
    TaskState.READY: frozenset({TaskState.SUBMITTED, TaskState.CANCELLED}),
    TaskState.SUBMITTED: frozenset(
        {TaskState.RUNNING, TaskState.DONE, TaskState.FAILED, TaskState.READY, TaskState.CANCELLED}
    ),
    TaskState.RUNNING: frozenset({TaskState.DONE, TaskState.FAILED, TaskState.READY, TaskState.CANCELLED}),
    TaskState.DONE: frozenset(),
    TaskState.FAILED: frozenset({TaskState.READY}),  # an explicit retry of a failed task
    TaskState.CANCELLED: frozenset(),
}

TERMINAL_STATES = frozenset({TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED})


class InvalidTransition(ValueError):
    """Raised when a task is asked to move along an edge the state machine does not have."""


def check_transition(old: TaskState | str, new: TaskState | str) -> None:
    """Raise :class:`InvalidTransition` unless ``old → new`` is an edge of the state machine."""
    o, n = TaskState(old), TaskState(new)
    if n not in TRANSITIONS[o]:
        raise InvalidTransition(f"task state {o.value} cannot become {n.value}")


class ResourceRequest(BaseModel):
    """What one task needs. ``nodes > 1`` or ``ranks_per_node > 1`` makes it an MPI app launched by the
    site's launcher (srun / mpiexec / torchrun)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nodes: int = Field(1, ge=1, description="Nodes for one task.")
    ranks_per_node: int = Field(1, ge=1, description="Processes (DDP ranks) per node.")
    gpus_per_rank: int = Field(0, ge=0, description="Accelerators bound to each rank.")
    cpus_per_rank: int = Field(1, ge=1, description="CPU cores per rank.")
    walltime_s: int | None = Field(None, ge=1, description="Wall-clock limit of one attempt, seconds.")

    @property
    def ranks(self) -> int:
        """Total ranks = nodes x ranks_per_node."""
        return self.nodes * self.ranks_per_node

    @property
    def is_mpi(self) -> bool:
        """Whether the task needs a parallel launcher."""
        return self.ranks > 1


class DriverRef(BaseModel):
    """The steering process a task was submitted by: its fence.

    A worker starts the task only while that driver still holds the campaign, and stops it when the driver is
    gone: on the driver's host it checks the process itself (``pid`` and ``start_ticks``), anywhere it compares
    ``token`` with the lease file (``lease_file``, on a filesystem shared with the workers) a newer driver
    rewrites when it takes the campaign over.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    token: str = Field(description="The driver's fencing token (its lease in the campaign database).")
    host: str = Field(description="Host name of the steering process.")
    pid: int = Field(description="Process id of the steering process.")
    start_ticks: int | None = Field(None, description="Its start time (clock ticks since boot), to tell a reused pid.")
    lease_file: str | None = Field(None, description="The campaign's lease file, holding the current driver's token.")


class TaskSpec(BaseModel):
    """A unit of work sent to a worker.

    The worker runs ``python -m <app> --config <workdir>/config.json --result <workdir>/result.json`` (through
    the site's launcher when ``resources.is_mpi``), then returns a :class:`TaskResult`.
    """

    model_config = ConfigDict(extra="forbid")

    task_id: str = Field(default_factory=lambda: os.urandom(16).hex(), description="32 random hex digits unless given.")
    kind: str = Field(description="Stage-level kind: preprocess, trial, train, screen, finetune, noop …")
    app: str = Field(description="Python module run on the worker, e.g. 'models.train'.")
    config: dict[str, Any] = Field(default_factory=dict, description="JSON config handed to the app.")
    workdir: str = Field(description="Directory for the app's config, outputs, logs and result.")
    resources: ResourceRequest = Field(default_factory=ResourceRequest)
    priority: int = 0
    attempt: int = Field(1, ge=1, description="1 for the first try, incremented on each retry.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables for the app.")
    driver: DriverRef | None = Field(None, description="The driver that submitted this attempt (set when claimed).")


class TaskResult(BaseModel):
    """What comes back from a worker, by value."""

    model_config = ConfigDict(extra="forbid")

    task_id: str
    attempt: int = 1
    exit_cause: ExitCause
    returncode: int | None = None
    result: dict[str, Any] | None = Field(None, description="The app's result JSON when it wrote one.")
    error: str | None = Field(None, description="Last lines of stderr or the exception text on failure.")
    host: str | None = None
    batch_job_id: str | None = None
    node_list: str | None = Field(None, description="The nodes the attempt ran on, as its scheduler names them "
                                                    "(Slurm's compact list, e.g. 'cn[1-2]', or comma-separated).")
    executor: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    stdout_path: str | None = None
    stderr_path: str | None = None
    cpu_seconds: float | None = Field(None, description="User + system CPU seconds of the app's processes.")

    @property
    def ok(self) -> bool:
        """True when the attempt succeeded."""
        return self.exit_cause is ExitCause.OK


def utcnow() -> datetime:
    """Timezone-aware now in UTC."""
    return datetime.now(UTC)


AppName = Literal["models.preprocess", "models.train", "models.evaluate", "models.screen", "models.finetune",
                  "models.demo"]
