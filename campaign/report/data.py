"""What a report shows, read from the campaign database (read-only) into plain dataclasses.

Each section is gathered by its own function and is empty when its stage has not run yet; the figures and the
page then show a "no data yet" note for it. What each section reads:

* HPO: ``trials`` rows (objective = best-epoch validation loss, lower is better).
* promotion: ``models`` with role ``promoted`` (``metrics``: objective, rank, reasons) and their trials.
* loss curves: the ``metrics`` table (epoch, head, split, name) of the trained models' tasks, else of the
  promoted models' trial tasks, else of the best trial; heads are named after ``datasets.head_id``.
* parity: artifacts of kind ``parity`` (see :data:`PARITY_FORMAT`) of the trained/promoted models' tasks.
* screening: ``screening_hits`` and, for the whole distribution, the screening tasks' result
  ``energy_histogram`` = ``{"edges": [B+1], "counts": [B]}`` (eV/atom), summed over shards.
* fine-tuning: ``models`` with role ``finetuned`` and ``scratch``; the downstream task is ``metrics["task"]``
  (else ``hyperparameters["task"]``, else the model name) and the figure of merit the test metrics of the
  ``models.finetune`` result (``test_target_mae``, else ``test_metrics[head]["energy_mae_per_atom"]``, else
  ``test_loss``).
* resources: ``attempts`` joined to their tasks and stages (CPU/GPU-hours = count × wall time; node-hours = the
  share of a node each attempt held × wall time, :func:`sites.facts.node_share`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, Float, case, cast, func, select, text

from campaign.hits import is_selection
from campaign.status import FAILURE_CAUSES, find_campaign
from db import models as m
from sites.facts import node_share

#: The file an artifact of kind ``parity`` points to: a NumPy ``.npz`` with, for each dataset ``D`` of the test
#: split, ``D/energy_true`` and ``D/energy_pred`` [G] (eV/atom) and optionally ``D/force_true`` and
#: ``D/force_pred`` [N, 3] (eV/Å).
PARITY_FORMAT = "npz: <dataset>/energy_true, <dataset>/energy_pred [G] eV/atom; <dataset>/force_true, force_pred [N,3] eV/Å"
#: Attempts drawn on the timeline (the most recent ones; the resource totals count all of them).
TIMELINE_LIMIT = 3000


def aware(ts: datetime | None) -> datetime | None:
    """A timezone-aware UTC datetime (SQLite returns naive ones; the ledger writes UTC)."""
    if ts is None:
        return None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


@dataclass
class Header:
    """The campaign row."""

    name: str
    status: str
    site: str
    started_at: datetime | None
    ended_at: datetime | None
    recipe_hash: str
    code_version: str
    git_sha: str | None


@dataclass
class TrialPoint:
    """One HPO trial."""

    hpo: str
    family: str
    number: int
    status: str
    objective: float | None
    config: dict[str, Any]
    wall_time_s: float | None


@dataclass
class PromotedModel:
    """A promoted model with the rule's verdict."""

    id: int
    name: str
    family: str
    objective: float | None
    rank: int | None
    reasons: list[str]
    hyperparameters: dict[str, Any]
    trial: str  # "<hpo> #<number>"


@dataclass
class Curve:
    """Per-epoch metrics of one run: ``values[(head, split, name)] = (epochs [E], values [E])``."""

    label: str
    task_id: str
    values: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]]

    def heads(self) -> list[str]:
        """Heads with a loss, the total ("all") first."""
        hs = sorted({h for h, _, n in self.values if n == "loss"}, key=lambda h: (h != "all", h))
        return hs


@dataclass
class ParitySet:
    """Test-split predictions of one model on one dataset."""

    label: str
    dataset: str
    energy_true: np.ndarray  # [G] eV/atom
    energy_pred: np.ndarray  # [G] eV/atom
    force_true: np.ndarray | None  # [N, 3] eV/Å
    force_pred: np.ndarray | None  # [N, 3] eV/Å


@dataclass
class TestMetrics:
    """One model's errors on one dataset's test split (the evaluate stage's ``models.metrics["test"]``)."""

    model: str
    dataset: str
    head: int
    graphs: int
    energy_mae_mev_per_atom: float
    energy_rmse_mev_per_atom: float
    force_mae_mev_per_a: float
    force_rmse_mev_per_a: float


@dataclass
class Hit:
    """A screening hit."""

    rank: int
    structure_id: str
    formula: str
    natoms: int
    score: float
    energy_per_atom: float | None
    uncertainty: float | None
    model: str
    #: The screening model's energy MAE on the test split of the hit's head's dataset (meV/atom), when evaluated.
    model_error_mev_per_atom: float | None = None


@dataclass
class Screening:
    """Hits, and the energy histogram of every screened structure when the screening tasks reported one."""

    hits: list[Hit] = field(default_factory=list)
    edges: np.ndarray | None = None  # [B+1] eV/atom
    counts: np.ndarray | None = None  # [B]
    screened: int = 0


@dataclass
class FinetunePair:
    """Pre-trained vs from-scratch on one downstream task (lower is better)."""

    task: str
    metric: str
    finetuned: float | None
    scratch: float | None


@dataclass
class ActiveRound:
    """One active-learning round: the members' held-out errors after it (round 0: the starting models) and its
    labels (round 0: the held-out set). Errors in meV/Å and meV/atom."""

    round: int
    models: int
    heldout_force_mae_mev_per_a: float | None
    best_heldout_force_mae_mev_per_a: float | None
    heldout_energy_mae_mev_per_atom: float | None
    base_test_force_mae_mev_per_a: float | None
    labelled: int
    failed_labels: int
    dataset_version: str | None


@dataclass
class Selection:
    """A structure a round chose to label, with what the label run said."""

    round: int
    rank: int
    structure_id: str
    formula: str
    natoms: int
    criterion: str
    score: float
    force_uncertainty: float | None
    label: str  # "ok", or the failure's cause
    energy_ev: float | None


@dataclass
class ScalingRow:
    """One point of a scaling sweep (the scaling stage's figures)."""

    mode: str
    precision: str
    ranks: int
    graphs_per_s: float | None
    efficiency: float | None
    step_time_s: float | None
    peak_memory_bytes: float | None
    energy_j_per_step: float | None = None


@dataclass
class ResourceRow:
    """Hours spent by one stage on one site (all attempts, failed ones included)."""

    stage: str
    site: str
    attempts: int
    failed: int
    node_hours: float
    cpu_hours: float
    gpu_hours: float
    cpu_utilisation: float | None = None  # CPU time used / CPU time held, over the attempts that measured it


@dataclass
class AttemptSpan:
    """One attempt on the timeline."""

    stage: str
    site: str
    host: str | None
    start: datetime
    end: datetime | None  # None: still running
    cause: str | None


@dataclass
class ReportData:
    """Everything a report shows."""

    header: Header
    heads: dict[str, str]
    trials: list[TrialPoint]
    promoted: list[PromotedModel]
    curves: list[Curve]
    parity: list[ParitySet]
    parity_missing: list[str]
    test_metrics: list[TestMetrics]
    screening: Screening
    finetune: list[FinetunePair]
    active_rounds: list[ActiveRound]
    selections: list[Selection]
    scaling: list[ScalingRow]
    resources: list[ResourceRow]
    timeline: list[AttemptSpan]
    timeline_total: int
    as_of: datetime


# --------------------------------------------------------------------------------------------- sections
def _heads(conn: Connection, cid: int) -> dict[str, str]:
    rows = conn.execute(select(m.Dataset.head_id, m.Dataset.name).join(m.Task, m.Task.id == m.Dataset.task_id)
                        .where(m.Task.campaign_id == cid).order_by(m.Dataset.head_id)).all()
    out = {"None": "all"}
    out.update({str(h): n for h, n in rows})
    return out


def _trials(conn: Connection, cid: int) -> list[TrialPoint]:
    t = m.Trial
    rows = conn.execute(select(t.hpo, t.family, t.number, t.status, t.objective, t.config, t.wall_time_s)
                        .where(t.campaign_id == cid).order_by(t.hpo, t.number)).all()
    return [TrialPoint(r.hpo, r.family, r.number, r.status, r.objective, dict(r.config or {}), r.wall_time_s)
            for r in rows]


def _models(conn: Connection, cid: int, roles: tuple[str, ...]) -> list[Any]:
    mt = m.Model.__table__
    return list(conn.execute(select(mt).where(mt.c.campaign_id == cid, mt.c.role.in_(roles)).order_by(mt.c.id)))


def _objective(metrics: dict[str, Any] | None) -> float | None:
    if not metrics:
        return None
    for key in ("objective", "best_val_loss", "val_loss"):
        v = metrics.get(key)
        if isinstance(v, int | float):
            return float(v)
    return None


def _promoted(conn: Connection, cid: int) -> list[PromotedModel]:
    trials = {r.id: f"{r.hpo} #{r.number}" for r in conn.execute(
        select(m.Trial.id, m.Trial.hpo, m.Trial.number).where(m.Trial.campaign_id == cid))}
    out = []
    for mod in _models(conn, cid, ("promoted",)):
        met = mod.metrics or {}
        out.append(PromotedModel(mod.id, mod.name, mod.family, _objective(met), met.get("rank"),
                                 list(met.get("reasons") or []), dict(mod.hyperparameters or {}),
                                 trials.get(mod.trial_id, "–")))
    out.sort(key=lambda p: (p.rank is None, p.rank if p.rank is not None else 0, p.id))
    return out


def _curve(conn: Connection, task_id: str, label: str, heads: dict[str, str]) -> Curve | None:
    mt = m.Metric
    rows = conn.execute(select(mt.epoch, mt.head, mt.split, mt.name, mt.value).where(mt.task_id == task_id)
                        .order_by(mt.epoch)).all()
    if not rows:
        return None
    acc: dict[tuple[str, str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        acc[(heads.get(r.head, r.head), r.split, r.name)].append((r.epoch, r.value))
    values = {k: (np.array([e for e, _ in v], dtype=np.int64), np.array([x for _, x in v], dtype=np.float64))
              for k, v in acc.items()}
    return Curve(label, task_id, values)


def _curves(conn: Connection, cid: int, heads: dict[str, str]) -> list[Curve]:
    candidates: list[tuple[str, str]] = []
    for role in ("trained", "promoted"):
        for mod in _models(conn, cid, (role,)):
            if mod.task_id:
                candidates.append((mod.task_id, f"{role} model {mod.id} ({mod.family})"))
        if candidates:
            break
    if not candidates:
        t = m.Trial
        best = conn.execute(select(t.task_id, t.hpo, t.number, t.family).where(
            t.campaign_id == cid, t.objective.is_not(None), t.task_id.is_not(None))
            .order_by(t.objective).limit(1)).first()
        if best is not None:
            candidates.append((best.task_id, f"best trial {best.hpo} #{best.number} ({best.family})"))
    out = []
    for task_id, label in candidates:
        c = _curve(conn, task_id, label, heads)
        if c is not None:  # every promoted (or trained) model: one figure each
            out.append(c)
    return out


def _load_parity(path: Path, label: str) -> list[ParitySet]:
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)
        out = []
        for ds in sorted({k.rsplit("/", 1)[0] for k in keys if k.endswith("/energy_true")}):
            et, ep = z[f"{ds}/energy_true"], z.get(f"{ds}/energy_pred")
            if ep is None or et.shape != ep.shape:
                raise ValueError(f"{path}: {ds}/energy_pred missing or not shaped like {ds}/energy_true")
            ft, fp = z.get(f"{ds}/force_true"), z.get(f"{ds}/force_pred")
            if ft is not None and (fp is None or ft.shape != fp.shape):
                ft = fp = None
            out.append(ParitySet(label, ds, np.asarray(et, float), np.asarray(ep, float),
                                 None if ft is None else np.asarray(ft, float),
                                 None if fp is None else np.asarray(fp, float)))
        return out


def _model_tasks(conn: Connection, mod: Any) -> list[str]:
    """The task that made ``mod`` and the tasks that read it (its evaluations), by lineage."""
    lt = m.Lineage.__table__
    readers = conn.execute(select(lt.c.dst_id).where(
        lt.c.kind == m.LineageKind.INPUT_OF.value, lt.c.src_kind == m.EntityKind.MODEL.value,
        lt.c.src_id == str(mod.id), lt.c.dst_kind == m.EntityKind.TASK.value)).scalars().all()
    return ([mod.task_id] if mod.task_id else []) + [str(t) for t in readers]


def _parity(conn: Connection, cid: int) -> tuple[list[ParitySet], list[str]]:
    out: list[ParitySet] = []
    missing: list[str] = []
    for role in ("trained", "promoted", "finetuned"):
        for mod in _models(conn, cid, (role,)):
            task_ids = _model_tasks(conn, mod)
            if not task_ids:
                continue
            arts = conn.execute(select(m.Artifact.path).where(m.Artifact.task_id.in_(task_ids),
                                                              m.Artifact.kind == "parity")).scalars().all()
            for path in arts:
                try:
                    out.extend(_load_parity(Path(path), f"{role} model {mod.id} ({mod.name})"))
                except (OSError, ValueError, KeyError) as exc:
                    missing.append(f"{path}: {exc}")
        if out:
            break
    return out, missing


def _test_metrics(conn: Connection, cid: int) -> list[TestMetrics]:
    out = []
    for mod in _models(conn, cid, ("trained", "promoted", "finetuned")):
        for dataset, d in sorted(((mod.metrics or {}).get("test") or {}).items()):
            if not isinstance(d, dict):
                continue
            out.append(TestMetrics(f"{mod.id} {mod.name}", dataset, int(d.get("head", -1)), int(d.get("graphs", 0)),
                                   *(math.nan if d.get(k) is None else float(d[k]) for k in (
                                       "energy_mae_mev_per_atom", "energy_rmse_mev_per_atom",
                                       "force_mae_mev_per_a", "force_rmse_mev_per_a"))))
    return out


def _screening(conn: Connection, cid: int) -> Screening:
    h, t = m.ScreeningHit, m.Task
    names = {r.id: f"{r.role} model {r.id} ({r.family})"
             for r in conn.execute(select(m.Model.id, m.Model.role, m.Model.family).where(m.Model.campaign_id == cid))}
    rows = [r for r in conn.execute(select(h.__table__).join(t, t.id == h.task_id).where(t.campaign_id == cid)
                                    .order_by(h.score, h.rank)).all()
            if not is_selection(r.data)]  # what active learning chose to label: its own section
    hits = [Hit(r.rank, r.structure_id, r.formula, r.natoms, r.score, r.energy_per_atom, r.uncertainty,
                names.get(r.model_id, "ensemble" if r.model_id is None else str(r.model_id)),
                ((r.data or {}).get("model_test_error") or {}).get("energy_mae_mev_per_atom")) for r in rows]
    out = Screening(hits=hits)
    results = conn.execute(select(t.result).where(t.campaign_id == cid, t.kind == "screen",
                                                  t.state == m.TaskState.DONE)).scalars().all()
    for res in results:
        hist = (res or {}).get("energy_histogram")
        if not hist or "edges" not in hist or "counts" not in hist:
            continue
        edges, counts = np.asarray(hist["edges"], float), np.asarray(hist["counts"], float)
        if edges.shape != (counts.size + 1,):
            continue
        if out.edges is None:
            out.edges, out.counts = edges, counts
        elif np.array_equal(out.edges, edges):
            out.counts = out.counts + counts
        else:  # shards binned differently: re-bin onto the first shard's edges by bin centres
            centres = 0.5 * (edges[1:] + edges[:-1])
            out.counts = out.counts + np.histogram(centres, bins=out.edges, weights=counts)[0]
    if out.counts is not None:
        out.screened = int(out.counts.sum())
    return out


def _ft_metric(metrics: dict[str, Any]) -> tuple[str, float | None]:
    target = metrics.get("test_target_mae")  # the downstream target's own error (energy, gap, dipole)
    if isinstance(target, int | float):
        unit = (metrics.get("unit") or "") if isinstance(metrics.get("unit"), str) else ""
        return f"test {metrics.get('target') or 'target'} MAE{f' ({unit})' if unit else ''}", float(target)
    per_head = metrics.get("test_metrics") or {}
    raw = [v.get("energy_mae_per_atom") for v in per_head.values() if isinstance(v, dict)]
    maes = [float(x) for x in raw if isinstance(x, int | float)]
    if maes:
        return "test energy MAE (eV/atom)", float(np.mean(maes))
    loss = metrics.get("test_loss")
    return "test loss", float(loss) if isinstance(loss, int | float) else None


def _finetune(conn: Connection, cid: int) -> list[FinetunePair]:
    pairs: dict[str, dict[str, tuple[str, float | None]]] = defaultdict(dict)
    for mod in _models(conn, cid, ("finetuned", "scratch")):
        met = mod.metrics or {}
        if "active_round" in met:  # an active-learning round's model: its own section
            continue
        task = str(met.get("task") or (mod.hyperparameters or {}).get("task") or mod.name)
        pairs[task][mod.role] = _ft_metric(met)
    out = []
    for task, d in sorted(pairs.items()):
        ft, sc = d.get("finetuned"), d.get("scratch")
        metric = (ft or sc or ("test loss", None))[0]
        if ft and sc and ft[0] != sc[0]:  # compare like with like
            metric = "test loss"
            ft, sc = (metric, None), (metric, None)
        out.append(FinetunePair(task, metric, ft[1] if ft else None, sc[1] if sc else None))
    return out


def _active_rounds(conn: Connection, name: str) -> list[ActiveRound]:
    """The named query ``active_rounds`` (one owner for the per-round figures)."""
    from db.queries import get_query

    q = get_query("active_rounds", conn.dialect.name)
    rows = conn.execute(text(q.sql), {"campaign": name}).mappings().all()  # text() binds :name itself
    return [ActiveRound(**{k: r[k] for k in ActiveRound.__dataclass_fields__}) for r in rows]


def _scaling(conn: Connection, cid: int) -> list[ScalingRow]:
    """The scaling stage's points, from its tasks' rows of the ``metrics`` table."""
    from campaign.stages.scaling import parse_point_key

    t, mt = m.Task, m.Metric
    rows = conn.execute(select(t.key, mt.name, mt.value).join(mt, mt.task_id == t.id)
                        .where(t.campaign_id == cid, t.key.like("scaling/%"), mt.split == "train")).all()
    figures: dict[tuple[str, str, int], dict[str, float]] = defaultdict(dict)
    for key, name, value in rows:
        point = parse_point_key(key)
        if point is not None:
            figures[point][name] = float(value)
    return [ScalingRow(mode, prec, n, f.get("graphs_per_s"), f.get("efficiency"), f.get("step_time_s"),
                       f.get("peak_memory_bytes"), f.get("energy_j_per_step"))
            for (mode, prec, n), f in sorted(figures.items())]


def _selections(conn: Connection, cid: int) -> list[Selection]:
    h, t, lb = m.ScreeningHit, m.Task, m.Label
    rows = conn.execute(select(h.rank, h.structure_id, h.formula, h.natoms, h.score, h.data, lb.status, lb.cause,
                               lb.energy_ev)
                        .join(t, t.id == h.task_id).outerjoin(lb, lb.hit_id == h.id)
                        .where(t.campaign_id == cid, t.key.like("active/r%/screen/%"))).all()
    out = []
    for r in rows:
        data = r.data or {}
        if not is_selection(data):
            continue
        out.append(Selection(int(data.get("round", 0)), r.rank, r.structure_id, r.formula, r.natoms,
                             str(data.get("criterion", "")), r.score, data.get("force_uncertainty"),
                             "not labelled" if r.status is None else "ok" if r.status == "ok" else str(r.cause),
                             r.energy_ev))
    return sorted(out, key=lambda s: (s.round, s.rank))


def _seconds(conn: Connection, start: Any, end: Any) -> Any:
    if conn.dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return cast(func.extract("epoch", end - start), Float)


def _resources(conn: Connection, cid: int, now: datetime) -> list[ResourceRow]:
    a, t, s = m.Attempt, m.Task, m.Stage
    end = func.coalesce(a.ended_at, now)
    secs = _seconds(conn, a.started_at, end)
    # grouped by the resources attempts held, so that each group's node share is looked up once
    rows = conn.execute(
        select(s.name, a.site, a.nodes, a.cpus, a.gpus, func.count(),
               func.sum(case((a.exit_cause.in_(FAILURE_CAUSES), 1), else_=0)), func.sum(secs),
               func.sum(a.cpu_seconds), func.sum(case((a.cpu_seconds.is_not(None), secs), else_=0)))
        .join(t, t.id == a.task_id).join(s, s.id == t.stage_id)
        .where(t.campaign_id == cid, a.started_at.is_not(None))
        .group_by(s.name, a.site, a.nodes, a.cpus, a.gpus)
    ).all()
    totals: dict[tuple[str, str], list[float]] = {}
    for stage, site, nodes, cpus, gpus, n, failed, seconds, cpu_used, measured_s in rows:
        hours = float(seconds or 0) / 3600
        acc = totals.setdefault((stage, site), [0, 0, 0.0, 0.0, 0.0, 0.0, 0.0])
        acc[0] += int(n)
        acc[1] += int(failed or 0)
        acc[2] += hours * node_share(site, int(nodes or 1), int(cpus or 0), int(gpus or 0))
        acc[3] += hours * int(cpus or 0)
        acc[4] += hours * int(gpus or 0)
        acc[5] += float(cpu_used or 0)  # CPU seconds the measured attempts used
        acc[6] += float(measured_s or 0) * int(cpus or 0)  # … and the CPU seconds they held
    return [ResourceRow(stage, site, int(v[0]), int(v[1]), v[2], v[3], v[4], v[5] / v[6] if v[6] > 0 else None)
            for (stage, site), v in sorted(totals.items())]


def _timeline(conn: Connection, cid: int) -> tuple[list[AttemptSpan], int]:
    a, t, s = m.Attempt, m.Task, m.Stage
    start = func.coalesce(a.started_at, a.submitted_at)  # an attempt in flight has only its submission time
    where = (t.campaign_id == cid, a.exit_cause.is_not(None) | a.ended_at.is_(None))
    total = conn.execute(select(func.count()).select_from(a).join(t, t.id == a.task_id).where(*where)).scalar_one()
    rows = conn.execute(select(s.name, a.site, a.host, start.label("start"), a.ended_at, a.exit_cause)
                        .join(t, t.id == a.task_id).join(s, s.id == t.stage_id).where(*where)
                        .order_by(start.desc()).limit(TIMELINE_LIMIT)).all()
    spans = []
    for r in rows:
        begin = r.start if isinstance(r.start, datetime) else datetime.fromisoformat(str(r.start))
        spans.append(AttemptSpan(r.name, r.site, r.host, aware(begin), aware(r.ended_at),  # type: ignore[arg-type]
                                 None if r.exit_cause is None else str(getattr(r.exit_cause, "value", r.exit_cause))))
    return spans[::-1], int(total)


class _Rows:
    """A SQLAlchemy connection as the :class:`db.readonly.Snapshot` that :func:`find_campaign` reads."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.dialect = conn.dialect.name

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.conn.execute(text(sql), dict(params or {}))]


def gather(engine: Engine, campaign: str, *, now: datetime | None = None) -> ReportData:
    """Read every section of the report of ``campaign`` in one read transaction.

    Raises:
        campaign.status.UnknownCampaign: no such campaign.
    """
    now = now or datetime.now(UTC)
    with engine.begin() as conn:
        row = find_campaign(_Rows(conn), campaign)
        c = conn.execute(select(m.Campaign.__table__).where(m.Campaign.id == row.id)).one()
        header = Header(c.name, c.status, c.site, aware(c.started_at), aware(c.ended_at), c.recipe_hash,
                        c.code_version, c.git_sha)
        heads = _heads(conn, c.id)
        parity, missing = _parity(conn, c.id)
        timeline, total = _timeline(conn, c.id)
        return ReportData(
            header=header, heads=heads, trials=_trials(conn, c.id), promoted=_promoted(conn, c.id),
            curves=_curves(conn, c.id, heads), parity=parity, parity_missing=missing,
            test_metrics=_test_metrics(conn, c.id),
            screening=_screening(conn, c.id), finetune=_finetune(conn, c.id),
            active_rounds=_active_rounds(conn, c.name), selections=_selections(conn, c.id),
            scaling=_scaling(conn, c.id), resources=_resources(conn, c.id, now), timeline=timeline, timeline_total=total, as_of=now,
        )
