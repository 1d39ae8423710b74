"""The status of a campaign: stages, tasks by state, best objective per HPO campaign, attempts in flight and
failures by cause, read from the campaign database in a handful of aggregate queries.

Every query is an aggregate or a bounded list served by an index (``ix_tasks_stage_id_state`` for the task
counts, ``ix_tasks_campaign_id_state`` for the tasks in flight, ``ix_attempts_exit_cause`` for the failures),
so a snapshot costs milliseconds on a database with a million tasks (``benchmarks/bench_status.py``).
All queries run in one read transaction: the counts are one consistent snapshot.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from rich.console import Group
from rich.table import Table
from rich.text import Text
from sqlalchemy import Connection, Engine, Row, and_, case, func, select
from sqlalchemy.exc import OperationalError, ProgrammingError

from campaign.errors import CampaignInputError
from db import models as m
from db.engine import DatabaseError, safe_url

#: Task states in the order the state machine walks them (the columns of the stage table).
STATES: tuple[str, ...] = tuple(s.value for s in m.TaskState)
#: Exit causes that count as failures.
FAILURE_CAUSES: tuple[m.ExitCause, ...] = tuple(c for c in m.ExitCause if c is not m.ExitCause.OK)
_IN_FLIGHT = (m.TaskState.SUBMITTED, m.TaskState.RUNNING)


class UnknownCampaign(CampaignInputError):
    """No campaign of that name (or none at all) in the database."""


@dataclass
class StageStatus:
    """One stage and its tasks counted by state."""

    name: str
    kind: str
    status: str
    started_at: datetime | None
    ended_at: datetime | None
    tasks: dict[str, int] = field(default_factory=dict)
    failure: str | None = None  # why the stage failed, when it did

    @property
    def total(self) -> int:
        """Tasks of the stage in any state."""
        return sum(self.tasks.values())


@dataclass
class HPOSummary:
    """One HPO campaign: trials by status and its best (lowest) objective so far."""

    hpo: str
    family: str
    trials: int
    done: int
    pruned: int
    failed: int
    in_flight: int
    best_objective: float | None
    best_number: int | None
    best_config: dict[str, Any] | None


@dataclass
class RunningAttempt:
    """An attempt in flight: where it runs and for how long (seconds since it started, else since submission)."""

    task_id: str
    key: str
    kind: str
    stage: str
    attempt: int
    site: str
    host: str | None
    since: datetime
    elapsed_s: float


@dataclass
class FailureCause:
    """Failed attempts of one exit cause, with the latest error message."""

    cause: str
    attempts: int
    tasks: int
    last_seen: datetime | None
    last_error: str | None


@dataclass
class CampaignStatus:
    """A consistent snapshot of one campaign."""

    campaign: str
    campaign_id: int
    status: str
    site: str
    started_at: datetime | None
    ended_at: datetime | None
    as_of: datetime
    stages: list[StageStatus]
    hpo: list[HPOSummary]
    running: list[RunningAttempt]
    running_total: int
    failures: list[FailureCause]
    states: tuple[str, ...] = STATES

    def tasks_by_state(self) -> dict[str, int]:
        """Task counts of the whole campaign by state."""
        out = dict.fromkeys(self.states, 0)
        for st in self.stages:
            for state, n in st.tasks.items():
                out[state] = out.get(state, 0) + n
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (datetimes as ISO strings); ``failures`` maps cause -> attempts for the API."""
        raw = asdict(self)
        raw["states"] = list(self.states)
        raw["failures_detail"] = raw.pop("failures")
        raw["failures"] = {f.cause: f.attempts for f in self.failures}
        raw["tasks"] = self.tasks_by_state()
        return _iso(raw)


def _iso(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return _aware(obj).isoformat()
    if isinstance(obj, dict):
        return {k: _iso(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_iso(v) for v in obj]
    return obj


def _aware(ts: datetime) -> datetime:
    """SQLite hands back naive datetimes; every timestamp the ledger writes is UTC."""
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def _value(x: Any) -> str:
    return x.value if hasattr(x, "value") else str(x)


def find_campaign(conn: Connection, name: str | None) -> Row[Any]:
    """The campaign row called ``name``, or the most recently created one.

    Raises:
        UnknownCampaign: no such campaign (the message lists the known names).
    """
    cols = (m.Campaign.id, m.Campaign.name, m.Campaign.status, m.Campaign.site, m.Campaign.started_at,
            m.Campaign.ended_at)
    if name is None:
        row = conn.execute(select(*cols).order_by(m.Campaign.id.desc()).limit(1)).first()
        if row is None:
            raise UnknownCampaign("the database holds no campaign yet (run one with `campaign run RECIPE`)")
        return cast(Row[Any], row)
    row = conn.execute(select(*cols).where(m.Campaign.name == name)).first()
    if row is None:
        known = conn.execute(select(m.Campaign.name).order_by(m.Campaign.id.desc()).limit(20)).scalars().all()
        raise UnknownCampaign(f"no campaign named {name!r}; known: {', '.join(known) or 'none'}")
    return cast(Row[Any], row)


def _stages(conn: Connection, cid: int) -> list[StageStatus]:
    rows = conn.execute(select(m.Stage.id, m.Stage.name, m.Stage.kind, m.Stage.status, m.Stage.started_at,
                               m.Stage.ended_at, m.Stage.config)
                        .where(m.Stage.campaign_id == cid).order_by(m.Stage.id)).all()
    stages = {r.id: StageStatus(r.name, r.kind, r.status, r.started_at, r.ended_at,
                                failure=(r.config or {}).get("failure") if r.status == "failed" else None)
              for r in rows}
    if stages:
        counts = conn.execute(
            select(m.Task.stage_id, m.Task.state, func.count())
            .where(m.Task.stage_id.in_(list(stages)))
            .group_by(m.Task.stage_id, m.Task.state)
        ).all()
        for sid, state, n in counts:
            stages[sid].tasks[_value(state)] = int(n)
    return list(stages.values())


def _hpo(conn: Connection, cid: int) -> list[HPOSummary]:
    t = m.Trial
    agg = conn.execute(
        select(
            t.hpo, func.min(t.family), func.count(),
            func.sum(case((t.status == "done", 1), else_=0)),
            func.sum(case((t.status == "pruned", 1), else_=0)),
            func.sum(case((t.status == "failed", 1), else_=0)),
            func.sum(case((t.status.in_(("asked", "running")), 1), else_=0)),
            func.min(t.objective),
        ).where(t.campaign_id == cid).group_by(t.hpo).order_by(t.hpo)
    ).all()
    best_sub = (select(t.hpo.label("hpo"), func.min(t.objective).label("best"))
                .where(t.campaign_id == cid, t.objective.is_not(None)).group_by(t.hpo).subquery())
    best = {r.hpo: r for r in conn.execute(
        select(t.hpo, t.number, t.config)
        .join(best_sub, and_(best_sub.c.hpo == t.hpo, best_sub.c.best == t.objective))
        .where(t.campaign_id == cid).order_by(t.hpo, t.number.desc())
    )}
    return [HPOSummary(hpo, family, int(n), int(done or 0), int(pruned or 0), int(failed or 0), int(fl or 0),
                       obj, best[hpo].number if hpo in best else None, best[hpo].config if hpo in best else None)
            for hpo, family, n, done, pruned, failed, fl, obj in agg]


def _running(conn: Connection, cid: int, now: datetime, limit: int) -> tuple[list[RunningAttempt], int]:
    a, t = m.Attempt, m.Task
    where = (t.campaign_id == cid, t.state.in_(_IN_FLIGHT), a.ended_at.is_(None))
    total = conn.execute(select(func.count()).select_from(a).join(t, t.id == a.task_id).where(*where)).scalar_one()
    since = func.coalesce(a.started_at, a.submitted_at)
    rows = conn.execute(
        select(a.task_id, t.key, t.kind, m.Stage.name.label("stage"), a.number, a.site, a.host,
               a.started_at, a.submitted_at)
        .join(t, t.id == a.task_id).join(m.Stage, m.Stage.id == t.stage_id)
        .where(*where).order_by(since).limit(limit)
    ).all()
    out = []
    for r in rows:
        start = _aware(r.started_at or r.submitted_at)
        out.append(RunningAttempt(r.task_id, r.key, r.kind, r.stage, r.number, r.site, r.host, start,
                                  max(0.0, (now - start).total_seconds())))
    return out, int(total)


def _failures(conn: Connection, cid: int) -> list[FailureCause]:
    a, t = m.Attempt, m.Task
    where = (t.campaign_id == cid, a.exit_cause.in_(FAILURE_CAUSES))
    rows = conn.execute(
        select(a.exit_cause, func.count(), func.count(func.distinct(a.task_id)), func.max(a.ended_at))
        .join(t, t.id == a.task_id).where(*where).group_by(a.exit_cause).order_by(func.count().desc())
    ).all()
    out = []
    for cause, n, ntasks, last in rows:
        err = conn.execute(select(a.error).join(t, t.id == a.task_id)
                           .where(t.campaign_id == cid, a.exit_cause == cause)
                           .order_by(a.ended_at.desc()).limit(1)).scalar()
        out.append(FailureCause(_value(cause), int(n), int(ntasks), last, err))
    return out


def collect_status(engine: Engine, campaign: str | None = None, *, now: datetime | None = None,
                   max_running: int = 20) -> CampaignStatus:
    """Read a snapshot of ``campaign`` (default: the most recent one).

    Args:
        engine: An engine on the campaign database (read-only is enough: see
            :func:`campaign.report.database.readonly_engine`).
        campaign: Campaign name, or None for the most recently created campaign.
        now: The time elapsed times are measured to (default: now, UTC).
        max_running: Attempts in flight listed (the oldest first); ``running_total`` counts them all.

    Raises:
        UnknownCampaign: no such campaign.
        DatabaseError: the database cannot be read (unreachable, or not a campaign database).
    """
    now = now or datetime.now(UTC)
    try:
        with engine.begin() as conn:
            row = find_campaign(conn, campaign)
            running, total = _running(conn, row.id, now, max_running)
            return CampaignStatus(
                campaign=row.name, campaign_id=row.id, status=row.status, site=row.site,
                started_at=row.started_at, ended_at=row.ended_at, as_of=now,
                stages=_stages(conn, row.id), hpo=_hpo(conn, row.id), running=running, running_total=total,
                failures=_failures(conn, row.id),
            )
    except (OperationalError, ProgrammingError) as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseError(f"cannot read the campaign database {safe_url(engine.url)}: {reason}") from exc


# ------------------------------------------------------------------------------------------------ display
def format_duration(seconds: float) -> str:
    """``3725`` -> ``1h02m05s``; under a minute ``42s``."""
    s = round(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    mi, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h{mi:02d}m"
    if h:
        return f"{h}h{mi:02d}m{s:02d}s"
    return f"{mi}m{s:02d}s" if mi else f"{s}s"


_STATE_STYLE = {"DONE": "green", "FAILED": "red", "RUNNING": "cyan", "SUBMITTED": "cyan", "CANCELLED": "yellow"}
_STATUS_STYLE = {"done": "green", "failed": "red", "running": "cyan", "interrupted": "yellow"}


def _fmt_ts(ts: datetime | None) -> str:
    return "–" if ts is None else _aware(ts).strftime("%Y-%m-%d %H:%M:%S UTC")


def hpo_table(summaries: list[HPOSummary]) -> Group:
    """One row per HPO campaign (trials by outcome, the best objective and which trial reached it), then the
    best trials' configurations in a table of their own (they are long: one wide column wraps them readably)."""
    hpo = Table(title="HPO campaigns (objective: best-epoch validation loss, lower is better)", title_justify="left")
    for col in ("hpo", "family", "trials", "done", "pruned", "failed", "in flight", "best", "trial"):
        hpo.add_column(col, justify="left" if col in ("hpo", "family") else "right")
    configs = Table(title="best configuration per HPO campaign", title_justify="left")
    configs.add_column("hpo", no_wrap=True)
    configs.add_column("trial", justify="right", no_wrap=True)
    configs.add_column("hyperparameters", ratio=1)
    for h in summaries:
        hpo.add_row(h.hpo, h.family, str(h.trials), str(h.done), str(h.pruned), str(h.failed),
                    str(h.in_flight), "–" if h.best_objective is None else f"{h.best_objective:.4g}",
                    "–" if h.best_number is None else f"#{h.best_number}")
        if h.best_number is not None:
            cfg = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in (h.best_config or {}).items())
            configs.add_row(h.hpo, f"#{h.best_number}", cfg)
    return Group(hpo, configs) if configs.row_count else Group(hpo)


def render_status(snap: CampaignStatus) -> Group:
    """The snapshot as Rich renderables: a header line, then stages, HPO campaigns, attempts in flight and
    failures (each table only when it has rows)."""
    style = _STATUS_STYLE.get(snap.status, "white")
    parts: list[Any] = [Text.from_markup(
        f"campaign [bold]{snap.campaign}[/] [{style}]{snap.status}[/] on {snap.site} · started "
        f"{_fmt_ts(snap.started_at)} · as of {_fmt_ts(snap.as_of)}")]

    totals = snap.tasks_by_state()
    shown = [s for s in snap.states if totals.get(s) or s == "DONE"]  # states no task is in are left out
    stages = Table(title="stages (tasks by state)", title_justify="left")
    for col in ("stage", "status", *(s.lower() for s in shown), "total"):
        stages.add_column(col, justify="right" if col not in ("stage", "status") else "left")
    for st in snap.stages:
        cells = [f"[{_STATE_STYLE[s]}]{st.tasks[s]}[/]" if st.tasks.get(s) and s in _STATE_STYLE
                 else str(st.tasks.get(s, 0)) for s in shown]
        name = st.name if st.name == st.kind else f"{st.name} ({st.kind})"
        stages.add_row(name, f"[{_STATUS_STYLE.get(st.status, 'white')}]{st.status}[/]", *cells, str(st.total))
    if not snap.stages:
        stages.add_row("(no stage started yet)", "", *("" for _ in shown), "0")
    parts.append(stages)
    for st in snap.stages:
        if st.failure:
            parts.append(Text.from_markup(f"[red]stage {st.name} failed:[/] ", end="") + Text(st.failure))

    if snap.hpo:
        parts.append(hpo_table(snap.hpo))

    if snap.running_total:
        more = snap.running_total - len(snap.running)
        run = Table(title=f"attempts in flight ({snap.running_total}"
                          f"{f', oldest {len(snap.running)} shown' if more else ''})", title_justify="left")
        for col in ("task", "stage", "kind", "try", "site", "host", "elapsed"):
            run.add_column(col, justify="right" if col in ("try", "elapsed") else "left")
        for r in snap.running:
            run.add_row(r.key, r.stage, r.kind, str(r.attempt), r.site, r.host or "(not reported yet)",
                        format_duration(r.elapsed_s))
        parts.append(run)

    if snap.failures:
        fail = Table(title="failed attempts by cause", title_justify="left")
        for col in ("cause", "attempts", "tasks", "last seen", "latest error"):
            fail.add_column(col, justify="right" if col in ("attempts", "tasks") else "left",
                            overflow="fold" if col == "latest error" else "ellipsis")
        for f in snap.failures:
            err = (f.last_error or "").strip().splitlines()
            fail.add_row(f"[red]{f.cause}[/]", str(f.attempts), str(f.tasks), _fmt_ts(f.last_seen),
                         (err[-1] if err else "")[:160])
        parts.append(fail)
    return Group(*parts)
