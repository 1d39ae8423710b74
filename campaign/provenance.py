"""Typed reads and writes of what stages produce: trials, models, ensembles, screening hits, datasets, artifacts,
metrics and lineage. Stages record through these calls and never see the database's tables or sessions (an
import contract says so); each call is one transaction, and a call that writes several rows writes all or none.

:class:`Provenance` is the half of :class:`campaign.ledger.Ledger` that stages use; the other half (campaigns,
stages, tasks, the lease) belongs to the steering loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import sessionmaker

from campaign.records import ArtifactRow, AttemptRow, Checkpoint, DatasetRow, LabelRow, ModelRow, TrialRow
from campaign.tasks import utcnow
from db import models as m
from db.engine import transaction
from models.atomic_files import sha256_file

_R = TypeVar("_R")


def _row(cls: type[_R], orm: Any) -> _R:
    """A frozen row dataclass from an ORM object (the fields it names)."""
    return cls(**{f.name: getattr(orm, f.name) for f in fields(cls)})  # type: ignore[arg-type]


class Provenance:
    """Typed provenance calls over the campaign database (see the module docstring)."""

    Session: sessionmaker[OrmSession]  # set by the Ledger (the name its callers know)

    # ----------------------------------------------------------------------------------------- general
    @contextmanager
    def unit_of_work(self, session: OrmSession | None = None) -> Iterator[OrmSession]:
        """One transaction for several writes (pass the session to each): all are recorded or none. With
        ``session`` given, that (outer) transaction is used."""
        if session is not None:
            yield session
        else:
            with transaction(self.Session) as s:
                yield s

    def campaign_id(self, name: str) -> int | None:
        """The id of the campaign named ``name``, or None."""
        with self.Session() as s:
            cid = s.scalar(select(m.Campaign.id).where(m.Campaign.name == name))
        return int(cid) if cid is not None else None

    def stage_config(self, stage_id: int) -> dict[str, Any]:
        """A stage's ``config`` JSON (failure reason, HPO warm-start snapshot, …)."""
        with self.Session() as s:
            row = s.get(m.Stage, stage_id)
            return dict(row.config or {}) if row is not None else {}

    def last_attempt(self, task_id: str) -> AttemptRow | None:
        """A task's latest attempt, or None."""
        with self.Session() as s:
            a = s.scalar(select(m.Attempt).where(m.Attempt.task_id == task_id)
                         .order_by(m.Attempt.number.desc()).limit(1))
            if a is None:
                return None
            return AttemptRow(a.number, a.exit_cause.value if a.exit_cause is not None else None, a.error,
                              a.started_at, a.ended_at)

    def successful_attempt_spans(self, task_ids: Sequence[str]) -> list[tuple[datetime | None, datetime | None]]:
        """``(started_at, ended_at)`` of the successful attempts of ``task_ids``."""
        with self.Session() as s:
            return [(a, b) for a, b in s.execute(select(m.Attempt.started_at, m.Attempt.ended_at).where(
                m.Attempt.task_id.in_(list(task_ids)), m.Attempt.exit_cause == m.ExitCause.OK))]

    # --------------------------------------------------------------------------- artifacts, datasets
    def add_artifact(self, path: str | Path, kind: str, *, task_id: str | None = None,
                     sha256: str | None = None, session: OrmSession | None = None) -> ArtifactRow:
        """Record a file by content (idempotent on path + sha256). Hashes the file if ``sha256`` is None."""
        p = Path(path)
        digest = sha256 or sha256_file(p)
        with self.unit_of_work(session) as s:
            row = s.scalar(select(m.Artifact).where(m.Artifact.path == str(p), m.Artifact.sha256 == digest))
            if row is None:
                row = m.Artifact(path=str(p), kind=kind, sha256=digest, bytes=p.stat().st_size, task_id=task_id)
                s.add(row)
                s.flush()
            return _row(ArtifactRow, row)

    def artifact(self, artifact_id: int) -> ArtifactRow | None:
        """An artifact by id."""
        with self.Session() as s:
            row = s.get(m.Artifact, artifact_id)
            return _row(ArtifactRow, row) if row is not None else None

    def find_artifact(self, path: str, sha256: str | None = None) -> int | None:
        """The newest artifact recorded at ``path`` (with that content, when ``sha256`` is given)."""
        q = select(m.Artifact.id).where(m.Artifact.path == str(path))
        if sha256:
            q = q.where(m.Artifact.sha256 == sha256)
        with self.Session() as s:
            found = s.scalar(q.order_by(m.Artifact.id.desc()))
        return int(found) if found is not None else None

    def artifacts_of_task(self, task_id: str, kind: str) -> list[ArtifactRow]:
        """The artifacts of one kind a task recorded, oldest first."""
        with self.Session() as s:
            return [_row(ArtifactRow, a) for a in s.scalars(
                select(m.Artifact).where(m.Artifact.task_id == task_id, m.Artifact.kind == kind)
                .order_by(m.Artifact.id))]

    def add_dataset(self, **values: Any) -> DatasetRow:
        """Record a preprocessed dataset (idempotent on name + content hash)."""
        with transaction(self.Session) as s:
            row = s.scalar(select(m.Dataset).where(m.Dataset.name == values["name"],
                                                   m.Dataset.content_hash == values["content_hash"]))
            if row is None:
                row = m.Dataset(**values)
                s.add(row)
                s.flush()
            return DatasetRow(row.id, row.name, row.store_path, row.head_id, dict(row.counts or {}))

    def datasets_of_task(self, task_id: str) -> list[DatasetRow]:
        """The datasets a task recorded."""
        with self.Session() as s:
            return [DatasetRow(d.id, d.name, d.store_path, d.head_id, dict(d.counts or {}))
                    for d in s.scalars(select(m.Dataset).where(m.Dataset.task_id == task_id)
                                       .order_by(m.Dataset.id))]

    def datasets_of_campaign(self, campaign_id: int) -> list[DatasetRow]:
        """The datasets a campaign's tasks recorded, oldest first."""
        with self.Session() as s:
            return [DatasetRow(d.id, d.name, d.store_path, d.head_id, dict(d.counts or {}))
                    for d in s.scalars(select(m.Dataset).join(m.Task, m.Dataset.task_id == m.Task.id)
                                       .where(m.Task.campaign_id == campaign_id).order_by(m.Dataset.id))]

    # ------------------------------------------------------------------------------- lineage, metrics
    def link(self, kind: str, src: tuple[str, Any], dst: tuple[str, Any], campaign_id: int | None = None, *,
             session: OrmSession | None = None) -> None:
        """Record a typed lineage edge ``src --kind--> dst`` (idempotent). Endpoints are ``(entity_kind, id)``."""
        with self.unit_of_work(session) as s:
            key = dict(kind=m.LineageKind(kind), src_kind=m.EntityKind(src[0]), src_id=str(src[1]),
                       dst_kind=m.EntityKind(dst[0]), dst_id=str(dst[1]))
            exists = s.scalar(select(m.Lineage.id).filter_by(**key))
            if exists is None:
                s.add(m.Lineage(campaign_id=campaign_id, **key))

    def add_metrics(self, task_id: str, rows: Sequence[Mapping[str, Any]], *, replace: bool = False,
                    session: OrmSession | None = None) -> int:
        """Record per-epoch metrics ``{epoch, head, split, name, value}`` of a run. Returns rows written.

        ``replace``: first remove the task's earlier rows (recording a run's metrics again is then idempotent).
        """
        with self.unit_of_work(session) as s:
            if replace:
                s.execute(delete(m.Metric).where(m.Metric.task_id == task_id))
            s.add_all(m.Metric(task_id=task_id, epoch=int(r["epoch"]), head=str(r["head"]), split=str(r["split"]),
                               name=str(r["name"]), value=float(r["value"])) for r in rows)
        return len(rows)

    def has_metrics(self, task_id: str, *, name: str | None = None, split: str | None = None) -> bool:
        """Whether a task has metric rows (of that name and split, when given)."""
        q = select(m.Metric.id).where(m.Metric.task_id == task_id)
        if name is not None:
            q = q.where(m.Metric.name == name)
        if split is not None:
            q = q.where(m.Metric.split == split)
        with self.Session() as s:
            return s.scalar(q.limit(1)) is not None

    def val_loss_curves(self, task_ids: Sequence[str]) -> dict[str, dict[int, float]]:
        """``{task id: {epoch: validation loss}}`` of runs' recorded run-level metrics."""
        out: dict[str, dict[int, float]] = {}
        if not task_ids:
            return out
        with self.Session() as s:
            for task_id, epoch, value in s.execute(select(m.Metric.task_id, m.Metric.epoch, m.Metric.value).where(
                    m.Metric.task_id.in_(list(task_ids)), m.Metric.split == "val", m.Metric.head == "None",
                    m.Metric.name == "loss")):
                out.setdefault(task_id, {})[epoch] = value
        return out

    # -------------------------------------------------------------------------------------- trials
    def trials(self, campaign_id: int, hpo: str | None = None) -> list[TrialRow]:
        """A campaign's trials (of one HPO campaign, by number; else all, by id)."""
        q = select(m.Trial).where(m.Trial.campaign_id == campaign_id)
        q = q.where(m.Trial.hpo == hpo).order_by(m.Trial.number) if hpo is not None else q.order_by(m.Trial.id)
        with self.Session() as s:
            return [_row(TrialRow, t) for t in s.scalars(q)]

    def trials_of_tasks(self, campaign_id: int, task_ids: Sequence[str]) -> list[TrialRow]:
        """The trials run by ``task_ids``."""
        with self.Session() as s:
            return [_row(TrialRow, t) for t in s.scalars(select(m.Trial).where(
                m.Trial.campaign_id == campaign_id, m.Trial.task_id.in_(list(task_ids))))]

    def told_trials(self, campaign_id: int, hpo: str | None = None) -> list[TrialRow]:
        """A campaign's told trials (of one HPO campaign when given), in the order they were told."""
        q = select(m.Trial).where(m.Trial.campaign_id == campaign_id, m.Trial.tell_event.is_not(None))
        if hpo:
            q = q.where(m.Trial.hpo == hpo)
        with self.Session() as s:
            return [_row(TrialRow, t) for t in s.scalars(q.order_by(m.Trial.hpo, m.Trial.tell_event))]

    def ask_trial(self, campaign_id: int, *, hpo: str, family: str, number: int, config: dict[str, Any],
                  task_id: str | None, ask_event: int, inputs: Sequence[tuple[str, Any]] = ()) -> None:
        """Record an asked trial (idempotent on campaign, HPO campaign and number); ``task_id`` is None for a
        configuration refused before it became a task. With a task, the lineage goes with it: the trial is the
        ``output_of`` its task, and ``inputs`` (the datasets it trains on) are ``input_of`` it."""
        with transaction(self.Session) as s:
            exists = s.scalar(select(m.Trial.id).where(m.Trial.campaign_id == campaign_id, m.Trial.hpo == hpo,
                                                       m.Trial.number == number))
            if exists is None:
                trial = m.Trial(campaign_id=campaign_id, hpo=hpo, family=family, number=number, config=config,
                                status="asked", task_id=task_id, ask_event=ask_event)
                s.add(trial)
                s.flush()
                if task_id is not None:
                    self.link("output_of", ("trial", trial.id), ("task", task_id), campaign_id, session=s)
                    for src in inputs:
                        self.link("input_of", src, ("task", task_id), campaign_id, session=s)

    def set_trial_task(self, trial_id: int, task_id: str) -> None:
        """Point a trial at its task."""
        with transaction(self.Session) as s:
            row = s.get(m.Trial, trial_id)
            if row is not None:
                row.task_id = task_id

    def mark_trials_running(self, trial_ids: Sequence[int]) -> None:
        """Asked trials whose task started become ``running``."""
        with transaction(self.Session) as s:
            for tid in trial_ids:
                row = s.get(m.Trial, tid)
                if row is not None and row.status == "asked":
                    row.status = "running"

    def tell_trial(self, campaign_id: int, hpo: str, number: int, *, status: str, tell_event: int,
                   objective: float | None = None, failure: str | None = None, best_epoch: int | None = None,
                   metrics: dict[str, Any] | None = None, wall_time_s: float | None = None,
                   task_id: str | None = None, metric_rows: Sequence[Mapping[str, Any]] = (),
                   checkpoint: Checkpoint | None = None) -> TrialRow:
        """Record a trial's outcome with its per-epoch metrics, its best checkpoint and that checkpoint's lineage:
        all in one transaction. Returns the trial as recorded."""
        with transaction(self.Session) as s:
            trial = s.scalar(select(m.Trial).where(m.Trial.campaign_id == campaign_id, m.Trial.hpo == hpo,
                                                   m.Trial.number == number))
            if trial is None:
                raise KeyError(f"trial {hpo}/{number}")
            trial.status, trial.objective, trial.failure = status, objective, failure
            trial.best_epoch, trial.metrics, trial.wall_time_s = best_epoch, metrics, wall_time_s
            trial.tell_event, trial.finished_at = tell_event, utcnow()
            if task_id is not None:
                self.add_metrics(task_id, metric_rows, replace=True, session=s)
                if checkpoint is not None and Path(checkpoint.path).exists():
                    art = self.add_artifact(checkpoint.path, "checkpoint", task_id=task_id, sha256=checkpoint.sha256,
                                            session=s)
                    self.link("output_of", ("artifact", art.id), ("task", task_id), campaign_id, session=s)
            s.flush()
            return _row(TrialRow, trial)

    def trial_counts(self, campaign_id: int) -> dict[str, dict[str, int]]:
        """``{hpo: {status: n}}`` of a campaign's trials."""
        out: dict[str, dict[str, int]] = {}
        with self.Session() as s:
            for hpo, status, n in s.execute(select(m.Trial.hpo, m.Trial.status, func.count())
                                            .where(m.Trial.campaign_id == campaign_id)
                                            .group_by(m.Trial.hpo, m.Trial.status)):
                out.setdefault(hpo, {})[status] = n
        return out

    # -------------------------------------------------------------------------------------- models
    def model(self, model_id: int) -> ModelRow | None:
        """A model by id."""
        with self.Session() as s:
            row = s.get(m.Model, model_id)
            return _row(ModelRow, row) if row is not None else None

    def models(self, *, ids: Sequence[int] | None = None, campaign_id: int | None = None,
               role: str | None = None, parent_id: int | None = None, task_id: str | None = None) -> list[ModelRow]:
        """Models matching every filter given, by id."""
        q = select(m.Model)
        if ids is not None:
            q = q.where(m.Model.id.in_(list(ids)))
        if campaign_id is not None:
            q = q.where(m.Model.campaign_id == campaign_id)
        if role is not None:
            q = q.where(m.Model.role == role)
        if parent_id is not None:
            q = q.where(m.Model.parent_id == parent_id)
        if task_id is not None:
            q = q.where(m.Model.task_id == task_id)
        with self.Session() as s:
            return [_row(ModelRow, r) for r in s.scalars(q.order_by(m.Model.id))]

    def save_model(self, match: Mapping[str, Any], *, create: Mapping[str, Any] | None = None,
                   update: Mapping[str, Any] | None = None) -> int:
        """Create or update the one model whose columns equal ``match`` (its role with a key: a promoted trial, a
        trained parent, a fine-tuning task), so that recording a result again is idempotent. ``create`` sets
        columns of a new row only, ``update`` on either. Returns the model id."""
        with transaction(self.Session) as s:
            row = s.scalar(select(m.Model).filter_by(**match))
            if row is None:
                row = m.Model(**match, **(create or {}))
                s.add(row)
            for key, value in (update or {}).items():
                setattr(row, key, value)
            s.flush()
            return int(row.id)

    def retire_promoted(self, campaign_id: int, keep: set[int]) -> None:
        """Promoted models a later promotion no longer selects are marked ``selected: false`` (kept, not removed)."""
        with transaction(self.Session) as s:
            for row in s.scalars(select(m.Model).where(m.Model.campaign_id == campaign_id,
                                                       m.Model.role == "promoted")):
                if row.id not in keep and (row.metrics or {}).get("selected", True):
                    row.metrics = {**(row.metrics or {}), "selected": False, "reasons": []}

    def save_ensemble(self, campaign_id: int, name: str, model_ids: list[int], rule: dict[str, Any]) -> int:
        """Create or update the campaign's ensemble of that name. Returns its id."""
        with transaction(self.Session) as s:
            row = s.scalar(select(m.Ensemble).where(m.Ensemble.campaign_id == campaign_id, m.Ensemble.name == name))
            if row is None:
                row = m.Ensemble(campaign_id=campaign_id, name=name, model_ids=model_ids, rule=rule)
                s.add(row)
            else:
                row.model_ids, row.rule = model_ids, rule
            s.flush()
            return int(row.id)

    def ensemble_members(self, campaign_id: int, name: str | None = None) -> list[int] | None:
        """The model ids of the campaign's newest ensemble (of that name), or None."""
        q = select(m.Ensemble).where(m.Ensemble.campaign_id == campaign_id)
        if name is not None:
            q = q.where(m.Ensemble.name == name)
        with self.Session() as s:
            row = s.scalar(q.order_by(m.Ensemble.id.desc()))
            return [int(i) for i in row.model_ids] if row is not None else None

    # ---------------------------------------------------------------------------------------- hits
    def hit_ids(self, task_ids: Sequence[str]) -> list[int]:
        """The screening hits of ``task_ids``, by rank."""
        with self.Session() as s:
            return [int(i) for i in s.scalars(select(m.ScreeningHit.id).where(
                m.ScreeningHit.task_id.in_(list(task_ids))).order_by(m.ScreeningHit.rank))]

    def hits(self, hit_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """``{hit id: {structure_id, rank, score, data…}}`` of the given screening hits."""
        with self.Session() as s:
            rows = s.scalars(select(m.ScreeningHit).where(m.ScreeningHit.id.in_(list(hit_ids))))
            return {int(r.id): {"structure_id": r.structure_id, "rank": r.rank, "score": r.score,
                                "task_id": r.task_id, "data": dict(r.data or {})} for r in rows}

    # ---------------------------------------------------------------------------------------- labels
    def add_labels(self, campaign_id: int, task_id: str, labels: Sequence[Mapping[str, Any]]) -> int:
        """Record a labelling task's outcomes (``labels`` rows' values; each row names its task and the hit it
        labels), in one transaction. Idempotent per task (a second call adds nothing). Returns the rows added."""
        with transaction(self.Session) as s:
            if s.scalar(select(func.count()).select_from(m.Label).where(m.Label.task_id == task_id)):
                return 0
            s.add_all([m.Label(campaign_id=campaign_id, task_id=task_id, **row) for row in labels])
            return len(labels)

    def labels(self, campaign_id: int, task_ids: Sequence[str] | None = None) -> list[LabelRow]:
        """The campaign's labels (of ``task_ids`` when given), by round and id."""
        with self.Session() as s:
            q = select(m.Label).where(m.Label.campaign_id == campaign_id)
            if task_ids is not None:
                q = q.where(m.Label.task_id.in_(list(task_ids)))
            return [_row(LabelRow, r) for r in s.scalars(q.order_by(m.Label.round, m.Label.id))]

    def add_hits(self, campaign_id: int, hits: Sequence[Mapping[str, Any]]) -> list[int]:
        """Record screening hits (each a ``screening_hits`` row's values, with its ``task_id``) and their
        ``output_of`` lineage, in one transaction. Returns their ids in order."""
        with transaction(self.Session) as s:
            rows = [m.ScreeningHit(**h) for h in hits]
            s.add_all(rows)
            s.flush()
            for row in rows:
                self.link("output_of", ("hit", row.id), ("task", row.task_id), campaign_id, session=s)
            return [int(r.id) for r in rows]
