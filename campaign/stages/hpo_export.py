"""Export an HPO campaign's trials as DeepHyper's ``results.csv`` so ``deephyper.analysis`` reads it.

Columns, as DeepHyper writes them: ``p:<name>`` per searched hyperparameter, ``objective`` (DeepHyper
maximises: ``-loss``, or ``"F_<cause>"`` for a failed trial), ``job_id``, ``job_status`` (DONE), and metadata
``m:timestamp_submit``, ``m:timestamp_start``, ``m:timestamp_end``, ``m:timestamp_gather`` (seconds since the
campaign's first trial was created), plus the campaign's own ``m:loss``, ``m:trial_status``, ``m:best_epoch``,
``m:wall_time_s``, ``m:family`` and ``m:task_id``. Rows are ordered by tell, as DeepHyper's are by gather.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from models.atomic_files import write_text_atomic


def _seconds(t: datetime | None, t0: datetime) -> float | None:
    if t is None:
        return None
    if t.tzinfo is None and t0.tzinfo is not None:
        t = t.replace(tzinfo=t0.tzinfo)
    if t0.tzinfo is None and t.tzinfo is not None:
        t0 = t0.replace(tzinfo=t.tzinfo)
    return (t - t0).total_seconds()


def results_rows(trials: Sequence[Any], names: Sequence[str], attempts: dict[str, tuple[Any, Any]]) -> list[dict[str, Any]]:
    """DeepHyper rows for the told ``trials`` (rows of ``db.models.Trial``).

    Args:
        trials: Trial rows of one HPO campaign.
        names: The searched hyperparameters.
        attempts: ``task_id -> (started_at, ended_at)`` of the trial's successful (or last) attempt.
    """
    told = sorted((t for t in trials if t.tell_event is not None), key=lambda t: t.tell_event)
    if not told:
        return []
    t0 = min(t.created_at for t in trials)
    rows = []
    for t in told:
        start, end = attempts.get(t.task_id or "", (None, None))
        ok = t.objective is not None and math.isfinite(t.objective) and t.status in ("done", "pruned")
        reason = (t.failure or "failed").split()[0].rstrip(":") if not ok else ""
        row: dict[str, Any] = {f"p:{n}": t.config.get(n) for n in names}
        row.update({
            "objective": -t.objective if ok else f"F_{reason}",
            "job_id": t.number,
            "job_status": "DONE",
            "m:timestamp_submit": _seconds(t.created_at, t0),
            "m:timestamp_start": _seconds(start, t0),
            "m:timestamp_end": _seconds(end, t0),
            "m:timestamp_gather": _seconds(t.finished_at, t0),
            "m:loss": t.objective if ok else None,
            "m:trial_status": t.status,
            "m:best_epoch": t.best_epoch,
            "m:wall_time_s": t.wall_time_s,
            "m:family": t.family,
            "m:task_id": t.task_id,
        })
        rows.append(row)
    return rows


def write_results_csv(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` as CSV atomically (temp file + rename); returns the path."""
    out = Path(path)
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text_atomic(out, buf.getvalue())
    return out
