"""Tables of the campaign database (SQLAlchemy 2.0 typed ORM).

Every preprocessing run, trial, promotion, training run, screening hit and fine-tune is a row here with its
lineage. Schema changes go through Alembic (``db/migrations``); a test asserts that autogenerate finds no
difference between these models and the migrations.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from db.states import ExitCause, TaskState

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Timezone-aware now in UTC (the default of every timestamp column)."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base with a stable constraint naming convention (so migrations are reproducible)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}  # noqa: RUF012


def _enum(cls: type[enum.Enum]) -> Enum:
    """A portable enum column: VARCHAR holding the member values (no native PostgreSQL ENUM type)."""
    return Enum(
        cls,
        native_enum=False,
        length=max(len(m.value) for m in cls),
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


class LineageKind(enum.StrEnum):
    """Typed provenance edges: ``src --kind--> dst``."""

    INPUT_OF = "input_of"  # an artifact/dataset/model is an input of a task
    OUTPUT_OF = "output_of"  # an artifact/dataset/model/hit is an output of a task
    DERIVED_FROM = "derived_from"  # generic derivation (a store from raw files, a chunk from a checkpoint)
    PROMOTED_FROM = "promoted_from"  # a promoted model from an HPO trial
    FINETUNED_FROM = "finetuned_from"  # a fine-tuned model from its pre-trained parent


class EntityKind(enum.StrEnum):
    """What a lineage endpoint refers to (table of the row)."""

    CAMPAIGN = "campaign"
    TASK = "task"
    DATASET = "dataset"
    ARTIFACT = "artifact"
    TRIAL = "trial"
    MODEL = "model"
    HIT = "hit"


class Campaign(Base):
    """One run of a recipe (resumed runs keep the same row)."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    recipe_path: Mapped[str | None] = mapped_column(Text)
    recipe_text: Mapped[str] = mapped_column(Text)
    recipe_hash: Mapped[str] = mapped_column(String(64), index=True)
    code_version: Mapped[str] = mapped_column(String(100))
    git_sha: Mapped[str | None] = mapped_column(String(40))
    user: Mapped[str | None] = mapped_column(String(100))
    host: Mapped[str | None] = mapped_column(String(200))
    site: Mapped[str] = mapped_column(String(100))
    profile: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default="created")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    # the lease of the one driver steering the campaign (see campaign.lease); NULL token: nobody holds it
    driver_token: Mapped[str | None] = mapped_column(String(32))
    driver_host: Mapped[str | None] = mapped_column(String(200))
    driver_pid: Mapped[int | None] = mapped_column(Integer)
    driver_start_ticks: Mapped[int | None] = mapped_column(BigInteger)
    driver_since: Mapped[datetime | None]
    driver_heartbeat_at: Mapped[datetime | None]
    # set by `campaign cancel`; the driver stops when it sees it, a driver taking the campaign clears it
    cancel_requested_at: Mapped[datetime | None]

    stages: Mapped[list[Stage]] = relationship(back_populates="campaign", order_by="Stage.id")


class Stage(Base):
    """One stage of a campaign: preprocess, hpo, promote, train, screen or finetune (one row per named stage)."""

    __tablename__ = "stages"
    __table_args__ = (UniqueConstraint("campaign_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]

    campaign: Mapped[Campaign] = relationship(back_populates="stages")
    tasks: Mapped[list[Task]] = relationship(back_populates="stage")


class Task(Base):
    """A unit of work sent to a worker. ``key`` is unique per campaign so that nothing runs twice."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("campaign_id", "key"),
        Index("ix_tasks_campaign_id_state", "campaign_id", "state"),
        Index("ix_tasks_stage_id_state", "stage_id", "state"),
        # the claim order (a stage's READY tasks, highest priority then oldest first): read in index order, not
        # sorted per claim (sorting made claiming 20,000 tasks quadratic)
        Index("ix_tasks_claim_order", "stage_id", "state", text("priority DESC"), "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    stage_id: Mapped[int] = mapped_column(ForeignKey("stages.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(300))
    kind: Mapped[str] = mapped_column(String(30), index=True)
    app: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]]
    state: Mapped[TaskState] = mapped_column(_enum(TaskState), default=TaskState.CREATED)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any] | None]
    charged_failures: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    stage: Mapped[Stage] = relationship(back_populates="tasks")
    attempts: Mapped[list[Attempt]] = relationship(back_populates="task", order_by="Attempt.number")


class Attempt(Base):
    """One try of a task on a site."""

    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("task_id", "number"),
        Index("ix_attempts_exit_cause", "exit_cause"),
        Index("ix_attempts_site_started_at", "site", "started_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    site: Mapped[str] = mapped_column(String(100))
    executor: Mapped[str | None] = mapped_column(String(100))
    batch_job_id: Mapped[str | None] = mapped_column(String(100))
    host: Mapped[str | None] = mapped_column(String(200))
    node_list: Mapped[str | None] = mapped_column(String(2000))  # the scheduler's node list of the attempt
    nodes: Mapped[int] = mapped_column(Integer, default=1)
    ranks: Mapped[int] = mapped_column(Integer, default=1)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    cpus: Mapped[int] = mapped_column(Integer, default=1)
    submitted_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    exit_cause: Mapped[ExitCause | None] = mapped_column(_enum(ExitCause))
    returncode: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    stdout_path: Mapped[str | None] = mapped_column(Text)
    stderr_path: Mapped[str | None] = mapped_column(Text)
    cpu_seconds: Mapped[float | None] = mapped_column(Float)  # user + system CPU of the app's processes

    task: Mapped[Task] = relationship(back_populates="attempts")


class Dataset(Base):
    """A preprocessed dataset (one registry entry turned into graph stores)."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("name", "content_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    head_id: Mapped[int] = mapped_column(Integer)
    fidelity: Mapped[str | None] = mapped_column(String(100))
    level_of_theory: Mapped[str | None] = mapped_column(String(200))
    units: Mapped[dict[str, Any]] = mapped_column(default=dict)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    elements: Mapped[list[Any]] = mapped_column(default=list)
    store_path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    content_hash: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # active learning: one per round
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    task_id: Mapped[str | None] = mapped_column(ForeignKey("tasks.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Artifact(Base):
    """A file a task produced or consumed, identified by content."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("path", "sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(50), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    task_id: Mapped[str | None] = mapped_column(ForeignKey("tasks.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Trial(Base):
    """One HPO trial: a configuration asked from the optimizer and, once done, its objective."""

    __tablename__ = "trials"
    __table_args__ = (
        UniqueConstraint("campaign_id", "hpo", "number"),
        Index("ix_trials_hpo_objective", "hpo", "objective"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    hpo: Mapped[str] = mapped_column(String(100))
    family: Mapped[str] = mapped_column(String(30))
    number: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]]
    objective: Mapped[float | None] = mapped_column(Float)
    best_epoch: Mapped[int | None] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any] | None]
    status: Mapped[str] = mapped_column(String(20), default="asked")
    failure: Mapped[str | None] = mapped_column(Text)
    task_id: Mapped[str | None] = mapped_column(ForeignKey("tasks.id", ondelete="SET NULL"), index=True)
    ask_event: Mapped[int | None] = mapped_column(Integer)  # position of its ask in the optimizer's ask/tell log
    tell_event: Mapped[int | None] = mapped_column(Integer)  # position of its tell (None: not told yet)
    wall_time_s: Mapped[float | None] = mapped_column(Float)  # the trial's training wall time (the cost axis)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class Model(Base):
    """A trained model: a family, its hyperparameters, a checkpoint and where it came from."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(30), default="trial")  # trial|promoted|trained|finetuned|scratch
    family: Mapped[str] = mapped_column(String(30), index=True)
    hyperparameters: Mapped[dict[str, Any]]
    checkpoint_id: Mapped[int | None] = mapped_column(ForeignKey("artifacts.id", ondelete="SET NULL"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"), index=True)
    trial_id: Mapped[int | None] = mapped_column(ForeignKey("trials.id", ondelete="SET NULL"), index=True)
    task_id: Mapped[str | None] = mapped_column(ForeignKey("tasks.id", ondelete="SET NULL"), index=True)
    metrics: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Metric(Base):
    """One scalar of a run: per epoch, head and split."""

    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_task_id_name", "task_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    head: Mapped[str] = mapped_column(String(100))
    split: Mapped[str] = mapped_column(String(10))
    name: Mapped[str] = mapped_column(String(50))
    value: Mapped[float] = mapped_column(Float)


class ScreeningHit(Base):
    """A top-k structure found by a screening run."""

    __tablename__ = "screening_hits"
    __table_args__ = (Index("ix_screening_hits_task_id_rank", "task_id", "rank"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"), index=True)
    rank: Mapped[int] = mapped_column(Integer)
    structure_id: Mapped[str] = mapped_column(String(100))
    formula: Mapped[str] = mapped_column(String(200))
    natoms: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    energy_per_atom: Mapped[float | None] = mapped_column(Float)
    uncertainty: Mapped[float | None] = mapped_column(Float)
    head: Mapped[str | None] = mapped_column(String(100))
    data: Mapped[dict[str, Any] | None]


class Label(Base):
    """A reference calculation an active-learning round asked for: one structure, its method, and its outcome
    (a failure kept with its cause). ``hit_id`` is the selected candidate it labels; energies in eV, forces eV/Å."""

    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("task_id", "structure_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    hit_id: Mapped[int | None] = mapped_column(ForeignKey("screening_hits.id", ondelete="SET NULL"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    structure_id: Mapped[str] = mapped_column(String(100))
    sid: Mapped[int] = mapped_column(BigInteger)
    formula: Mapped[str] = mapped_column(String(200))
    natoms: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(30))
    status: Mapped[str] = mapped_column(String(10))
    cause: Mapped[str | None] = mapped_column(String(50))
    message: Mapped[str | None] = mapped_column(Text)
    energy_ev: Mapped[float | None] = mapped_column(Float)
    max_force_ev_per_a: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Lineage(Base):
    """A typed provenance edge ``(src_kind, src_id) --kind--> (dst_kind, dst_id)``."""

    __tablename__ = "lineage"
    __table_args__ = (
        UniqueConstraint("kind", "src_kind", "src_id", "dst_kind", "dst_id"),
        Index("ix_lineage_src", "src_kind", "src_id"),
        Index("ix_lineage_dst", "dst_kind", "dst_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    kind: Mapped[LineageKind] = mapped_column(_enum(LineageKind))
    src_kind: Mapped[EntityKind] = mapped_column(_enum(EntityKind))
    src_id: Mapped[str] = mapped_column(String(64))
    dst_kind: Mapped[EntityKind] = mapped_column(_enum(EntityKind))
    dst_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Ensemble(Base):
    """A named set of models evaluated together (e.g. the promoted top-k, for uncertainty estimates)."""

    __tablename__ = "ensembles"
    __table_args__ = (UniqueConstraint("campaign_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    model_ids: Mapped[list[Any]]
    rule: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
