"""The rows stages and the steering loop are handed: plain frozen values, importable without SQLAlchemy.

Reading them never touches the database and changing them changes nothing there; the
:class:`~campaign.ledger.Ledger` (and its :class:`~campaign.provenance.Provenance` half) makes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from campaign.tasks import TaskState


@dataclass(slots=True)
class TaskRow:
    """A ``tasks`` row as plain values: what :meth:`Ledger.tasks` returns and what stages are handed. Changing
    it changes nothing in the database."""

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


@dataclass(frozen=True)
class Recorded:
    """What recording one :class:`TaskResult` did.

    Attributes:
        state: The task's state after it (DONE, FAILED, READY for a retry).
        task: The task row after it.
        stale: The result was not the task's current attempt (already recorded, or superseded by a newer
            attempt): its attempt row was closed if it was open, the task was left alone and nothing was charged.
    """

    state: TaskState
    task: TaskRow
    stale: bool = False


@dataclass(frozen=True)
class DatasetRow:
    """A recorded dataset as a stage reads it: its store and the head that trains on it."""

    id: int
    name: str
    store_path: str
    head_id: int
    counts: dict[str, Any]


@dataclass(frozen=True)
class LabelRow:
    """A recorded reference calculation of an active-learning round (energy eV, force eV/Å)."""

    id: int
    task_id: str
    hit_id: int | None
    round: int
    structure_id: str
    status: str
    cause: str | None
    energy_ev: float | None


@dataclass(frozen=True)
class TrialRow:
    """An HPO trial: its configuration, its ask/tell log positions and, once told, its outcome."""

    id: int
    campaign_id: int
    hpo: str
    family: str
    number: int
    config: dict[str, Any]
    objective: float | None
    best_epoch: int | None
    metrics: dict[str, Any] | None
    status: str
    failure: str | None
    task_id: str | None
    ask_event: int | None
    tell_event: int | None
    wall_time_s: float | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class ModelRow:
    """A model (promoted, trained, fine-tuned, from scratch) and where it came from."""

    id: int
    campaign_id: int
    name: str
    role: str
    family: str
    hyperparameters: dict[str, Any]
    metrics: dict[str, Any] | None
    checkpoint_id: int | None
    trial_id: int | None
    task_id: str | None
    parent_id: int | None


@dataclass(frozen=True)
class ArtifactRow:
    """A file recorded by content."""

    id: int
    path: str
    kind: str
    sha256: str
    bytes: int
    task_id: str | None


@dataclass(frozen=True)
class AttemptRow:
    """One attempt of a task, as the stages read it."""

    number: int
    exit_cause: str | None
    error: str | None
    started_at: datetime | None
    ended_at: datetime | None


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file to record with a result (``sha256`` as the app computed it)."""

    path: str
    sha256: str | None = None
