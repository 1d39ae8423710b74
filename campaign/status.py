"""The status of a campaign: stages, tasks by state, best objective per HPO campaign, attempts in flight and
failures by cause, read from the campaign database in a handful of aggregate queries.

Every query is an aggregate or a bounded list served by an index (``ix_tasks_stage_id_state`` for the task
counts, ``ix_tasks_campaign_id_state`` for the tasks in flight, ``ix_attempts_exit_cause`` for the failures),
so a snapshot costs milliseconds on a database with a million tasks (``benchmarks/bench_status.py``).
All queries run in one read transaction (:func:`db.readonly.readonly_snapshot`): the counts are one consistent
snapshot. The queries are plain SQL through the standard library's ``sqlite3`` (or psycopg), not SQLAlchemy:
``campaign status`` must answer in well under a second, and importing SQLAlchemy and the ORM models alone would
take half of that.

An attempt in flight is *queued* until its worker writes its start record (``attempt<N>.proc.json`` in the
task's working directory, :mod:`campaign.attempt_files`), then *running* since the time in that record; a
running training attempt also shows its epoch and latest validation loss from its ``metrics.jsonl``. Those
files are read where the status runs: on a machine that does not share the workers' filesystem every attempt
in flight reads as queued.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from campaign.attempt_files import IN_PROCESS_PACKAGE, process_file
from campaign.errors import CampaignInputError
from db.readonly import Snapshot, as_datetime, as_json, readonly_snapshot
from db.states import ExitCause, TaskState

#: Task states in the order the state machine walks them (the columns of the stage table).
STATES: tuple[str, ...] = tuple(s.value for s in TaskState)
#: Exit causes that count as failures.
FAILURE_CAUSES: tuple[ExitCause, ...] = tuple(c for c in ExitCause if c is not ExitCause.OK)
_IN_FLIGHT = (TaskState.SUBMITTED.value, TaskState.RUNNING.value)
#: How much of a running trial's ``metrics.jsonl`` is read for its progress (the latest epochs).
_METRICS_TAIL_BYTES = 256 * 1024


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
    warnings: dict[str, str] = field(default_factory=dict)  # what a done stage found wrong (config.warnings)

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
class Progress:
    """How far a running training attempt has come, from its ``metrics.jsonl``."""

    epoch: int  # the last epoch finished (0-based)
    epochs: int | None  # epochs configured
    val_loss: float | None  # that epoch's validation loss (the objective's quantity)


@dataclass
class RunningAttempt:
    """An attempt in flight: queued (submitted, its worker has not started it) or running (since the start its
    worker recorded), where, and for how long."""

    task_id: str
    key: str
    kind: str
    stage: str
    attempt: int
    site: str
    host: str | None
    since: datetime  # when it started running; while queued, when it was submitted
    elapsed_s: float
    phase: str = "queued"  # "queued", "running", or "submitted" (an in-process app: no start record to tell)
    progress: Progress | None = None


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


@dataclass(frozen=True)
class CampaignRow:
    """The campaign a status or report is about."""

    id: int
    name: str
    status: str
    site: str
    started_at: datetime | None
    ended_at: datetime | None


def find_campaign(db: Snapshot, name: str | None) -> CampaignRow:
    """The campaign called ``name``, or the most recently created one.

    Raises:
        UnknownCampaign: no such campaign (the message lists the known names).
    """
    cols = "SELECT id, name, status, site, started_at, ended_at FROM campaigns"
    if name is None:
        rows = db.rows(f"{cols} ORDER BY id DESC LIMIT 1")
        if not rows:
            raise UnknownCampaign("the database holds no campaign yet (run one with `campaign run RECIPE`)")
    else:
        rows = db.rows(f"{cols} WHERE name = :name", {"name": name})
        if not rows:
            known = [r[0] for r in db.rows("SELECT name FROM campaigns ORDER BY id DESC LIMIT 20")]
            raise UnknownCampaign(f"no campaign named {name!r}; known: {', '.join(known) or 'none'}")
    cid, cname, status, site, started, ended = rows[0]
    return CampaignRow(int(cid), cname, status, site, as_datetime(started), as_datetime(ended))


def _stages(db: Snapshot, cid: int) -> list[StageStatus]:
    rows = db.rows("SELECT id, name, kind, status, started_at, ended_at, config FROM stages "
                   "WHERE campaign_id = :cid ORDER BY id", {"cid": cid})
    stages = {}
    for sid, name, kind, status, started, ended, config in rows:
        cfg = as_json(config) or {}
        failure = cfg.get("failure") if status == "failed" else None
        stages[sid] = StageStatus(name, kind, status, as_datetime(started), as_datetime(ended), failure=failure,
                                  warnings={str(k): str(v) for k, v in (cfg.get("warnings") or {}).items()})
    if stages:  # by stage id: served by ix_tasks_stage_id_state (a join with stages made SQLite scan every task)
        marks = ", ".join(f":s{k}" for k in range(len(stages)))
        counts = db.rows(f"SELECT stage_id, state, COUNT(*) FROM tasks WHERE stage_id IN ({marks}) "
                         "GROUP BY stage_id, state", {f"s{k}": sid for k, sid in enumerate(stages)})
        for sid, state, n in counts:
            stages[sid].tasks[state] = int(n)
    return list(stages.values())


def _hpo(db: Snapshot, cid: int) -> list[HPOSummary]:
    agg = db.rows(
        "SELECT hpo, MIN(family), COUNT(*), "
        "SUM(CASE WHEN status = 'done' THEN 1 ELSE 0 END), SUM(CASE WHEN status = 'pruned' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN status IN ('asked', 'running') THEN 1 ELSE 0 END), MIN(objective) "
        "FROM trials WHERE campaign_id = :cid GROUP BY hpo ORDER BY hpo", {"cid": cid})
    best = {hpo: (number, config) for hpo, number, config in db.rows(
        "SELECT t.hpo, t.number, t.config FROM trials t JOIN ("
        "  SELECT hpo, MIN(objective) AS best FROM trials WHERE campaign_id = :cid AND objective IS NOT NULL "
        "  GROUP BY hpo) b ON b.hpo = t.hpo AND b.best = t.objective "
        "WHERE t.campaign_id = :cid ORDER BY t.hpo, t.number DESC", {"cid": cid})}
    out = []
    for hpo, family, n, done, pruned, failed, fl, obj in agg:
        number, config = best.get(hpo, (None, None))
        out.append(HPOSummary(hpo, family, int(n), int(done or 0), int(pruned or 0), int(failed or 0),
                              int(fl or 0), None if obj is None else float(obj), number,
                              None if config is None else as_json(config)))
    return out


def _start_record(spec: Mapping[str, Any], attempt: int) -> dict[str, Any] | None:
    """The start record the attempt's worker wrote, or ``None`` while it has not started (or cannot be seen)."""
    workdir = spec.get("workdir")
    if not workdir:
        return None
    try:
        record = json.loads(process_file(Path(workdir), attempt).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _progress(spec: Mapping[str, Any]) -> Progress | None:
    """Epoch and validation loss of a running training attempt (an app that writes ``metrics.jsonl``)."""
    config = spec.get("config") or {}
    out = config.get("output_dir") if isinstance(config, dict) else None
    if not out:
        return None
    from models.training.metrics import read_metrics  # standard library only

    rows = read_metrics(Path(out) / "metrics.jsonl", tail_bytes=_METRICS_TAIL_BYTES)
    val = [r for r in rows if r.get("split") == "val" and r.get("head") is None and r.get("name") == "loss"]
    if not val:
        return None
    last = max(val, key=lambda r: int(r["epoch"]))
    epochs = config.get("epochs")
    return Progress(int(last["epoch"]), int(epochs) if isinstance(epochs, int) else None, float(last["value"]))


def _running(db: Snapshot, cid: int, now: datetime, limit: int) -> tuple[list[RunningAttempt], int]:
    where = ("t.campaign_id = :cid AND t.state IN (:s1, :s2) AND a.ended_at IS NULL")
    params = {"cid": cid, "s1": _IN_FLIGHT[0], "s2": _IN_FLIGHT[1], "limit": limit}
    total = db.rows(f"SELECT COUNT(*) FROM attempts a JOIN tasks t ON t.id = a.task_id WHERE {where}", params)[0][0]
    rows = db.rows(
        "SELECT a.task_id, t.key, t.kind, s.name, a.number, a.site, a.host, a.started_at, a.submitted_at, t.spec "
        "FROM attempts a JOIN tasks t ON t.id = a.task_id JOIN stages s ON s.id = t.stage_id "
        f"WHERE {where} ORDER BY COALESCE(a.started_at, a.submitted_at) LIMIT :limit", params)
    out = []
    for task_id, key, kind, stage, number, site, host, started, submitted, spec_text in rows:
        spec = as_json(spec_text) or {}
        record = _start_record(spec, int(number))
        phase = "submitted" if str(spec.get("app", "")).startswith(IN_PROCESS_PACKAGE) else "queued"
        progress = None
        start = as_datetime(started) or as_datetime(submitted) or now
        if record is not None:
            phase = "running"
            host = host or record.get("host")
            try:
                start = as_datetime(record.get("started_at")) or start
            except ValueError:
                pass
            progress = _progress(spec)
        out.append(RunningAttempt(task_id, key, kind, stage, int(number), site, host, start,
                                  max(0.0, (now - start).total_seconds()), phase, progress))
    return out, int(total)


def _failures(db: Snapshot, cid: int) -> list[FailureCause]:
    causes = [c.value for c in FAILURE_CAUSES]
    marks = ", ".join(f":c{i}" for i in range(len(causes)))
    params: dict[str, Any] = {"cid": cid, **{f"c{i}": c for i, c in enumerate(causes)}}
    rows = db.rows(
        "SELECT a.exit_cause, COUNT(*), COUNT(DISTINCT a.task_id), MAX(a.ended_at) FROM attempts a "
        f"JOIN tasks t ON t.id = a.task_id WHERE t.campaign_id = :cid AND a.exit_cause IN ({marks}) "
        "GROUP BY a.exit_cause ORDER BY COUNT(*) DESC", params)
    out = []
    for cause, n, ntasks, last in rows:
        err = db.rows("SELECT a.error FROM attempts a JOIN tasks t ON t.id = a.task_id "
                      "WHERE t.campaign_id = :cid AND a.exit_cause = :cause ORDER BY a.ended_at DESC LIMIT 1",
                      {"cid": cid, "cause": cause})
        out.append(FailureCause(cause, int(n), int(ntasks), as_datetime(last), err[0][0] if err else None))
    return out


def collect_status(db: str | None = None, campaign: str | None = None, *, now: datetime | None = None,
                   max_running: int = 20) -> CampaignStatus:
    """Read a snapshot of ``campaign`` (default: the most recent one).

    Args:
        db: Database URL (default: ``$CAMPAIGN_DB`` or ``sqlite:///campaign.db``; a bare path is a SQLite file).
        campaign: Campaign name, or None for the most recently created campaign.
        now: The time elapsed times are measured to (default: now, UTC).
        max_running: Attempts in flight listed (the oldest first); ``running_total`` counts them all.

    Raises:
        UnknownCampaign: no such campaign.
        DatabaseError: the database cannot be read (unreachable, or not a campaign database).
    """
    now = now or datetime.now(UTC)
    with readonly_snapshot(db) as snap:
        row = find_campaign(snap, campaign)
        running, total = _running(snap, row.id, now, max_running)
        return CampaignStatus(
            campaign=row.name, campaign_id=row.id, status=row.status, site=row.site,
            started_at=row.started_at, ended_at=row.ended_at, as_of=now,
            stages=_stages(snap, row.id), hpo=_hpo(snap, row.id), running=running, running_total=total,
            failures=_failures(snap, row.id),
        )


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
    hpo = Table(title="HPO campaigns (objective: best-epoch validation loss, lower is better)", title_justify="left",
                box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False, collapse_padding=True)  # fits 80 columns
    for col in ("hpo", "family", "trials", "done", "pruned", "failed", "in flight", "best", "trial"):
        hpo.add_column(col, justify="left" if col in ("hpo", "family") else "right", no_wrap=True)
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


def _progress_text(p: Progress | None) -> str:
    if p is None:
        return ""
    epoch = f"epoch {p.epoch + 1}" + (f"/{p.epochs}" if p.epochs else "")
    return epoch + ("" if p.val_loss is None else f", val loss {p.val_loss:.4g}")


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
        for what, warning in st.warnings.items():
            parts.append(Text.from_markup(f"[yellow]stage {st.name} warns ({what}):[/] ", end="") + Text(warning))

    if snap.hpo:
        parts.append(hpo_table(snap.hpo))

    if snap.running_total:
        more = snap.running_total - len(snap.running)
        run = Table(title=f"attempts in flight ({snap.running_total}"
                          f"{f', oldest {len(snap.running)} shown' if more else ''})", title_justify="left")
        for col in ("task", "stage", "kind", "try", "site", "host", "state", "for", "progress"):
            run.add_column(col, justify="right" if col in ("try", "for") else "left")
        for r in snap.running:
            run.add_row(r.key, r.stage, r.kind, str(r.attempt), r.site, r.host or "–",
                        {"running": "[cyan]running[/]", "queued": "[yellow]queued[/]"}.get(r.phase, r.phase),
                        format_duration(r.elapsed_s), _progress_text(r.progress))
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
