"""The output of a task's attempts (``campaign logs``): which attempt, where its worker wrote stdout and stderr,
their last lines, and following them while the attempt runs.

A task is named as people see it: its id, the first characters of its id (tables show eight), or its key
(``hpo/painn/3``; ``campaign`` says whose when several campaigns have that key). An attempt that has ended has
its output files recorded in the database; one still running has them in its task's working directory, where
its worker is writing them (``attempt<N>.out`` and ``.err``): they are read where this command runs, so a
machine that does not share the workers' filesystem shows only ended attempts' recorded paths, and says so.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from campaign.errors import CampaignInputError
from db.readonly import Snapshot, as_json, readonly_snapshot

#: The most of a file's end read to find its last lines (a log of very long lines shows fewer of them).
TAIL_MAX_BYTES = 4 * 1024 * 1024
_ID_PREFIX = re.compile(r"[0-9a-f]{6,32}")


@dataclass(frozen=True)
class AttemptOutput:
    """One attempt of a task and where its output is."""

    task_id: str
    key: str
    campaign: str
    state: str  # the task's state
    number: int
    attempts: int  # how many the task has had
    host: str | None
    exit_cause: str | None  # None while it runs
    returncode: int | None
    stdout: Path | None
    stderr: Path | None

    @property
    def ended(self) -> bool:
        """Whether this attempt has ended (its outcome is recorded)."""
        return self.exit_cause is not None

    def describe(self) -> str:
        """``running on nid00042`` / ``ended: error (exit status 1) on nid00042``."""
        where = f" on {self.host}" if self.host else ""
        if not self.ended:
            return f"in flight{where} (task {self.state})"
        code = "" if self.returncode is None else f" (exit status {self.returncode})"
        return f"ended: {self.exit_cause}{code}{where}"


def _resolve_task(db: Snapshot, task: str, campaign: str | None) -> tuple[str, str, str, str, dict]:
    """``(id, key, campaign, state, spec)`` of the task named ``task``."""
    base = ("SELECT t.id, t.key, c.name, t.state, t.spec FROM tasks t JOIN campaigns c ON c.id = t.campaign_id "
            "WHERE ")
    where_campaign = " AND c.name = :campaign" if campaign else ""
    params: dict[str, object] = {"campaign": campaign} if campaign else {}
    task = task.rstrip("…")
    rows: list[tuple] = []
    if _ID_PREFIX.fullmatch(task):
        rows = db.rows(base + "t.id >= :lo AND t.id < :hi" + where_campaign + " LIMIT 6",
                       {**params, "lo": task, "hi": task + "g"})  # ids are lower-case hex: a prefix is a range
    if not rows:
        rows = db.rows(base + "t.key = :key" + where_campaign + " LIMIT 6", {**params, "key": task})
    if not rows:
        scope = f" in campaign {campaign!r}" if campaign else ""
        raise CampaignInputError(f"no task {task!r}{scope}: give its id (or its first 8 characters) or its key, "
                                 "as `campaign status` and `campaign sql` show them")
    if len(rows) > 1:
        shown = ", ".join(f"{r[0][:8]}… ({r[2]} {r[1]})" for r in rows[:5])
        hint = "more characters of the id" if _ID_PREFIX.fullmatch(task) and rows[0][1] != task else "--campaign"
        raise CampaignInputError(f"{task!r} names several tasks ({shown}): give {hint}")
    tid, key, cname, state, spec = rows[0]
    return tid, key, cname, state, as_json(spec) or {}


def find_attempt(task: str, *, campaign: str | None = None, attempt: int | None = None,
                 db: str | None = None) -> AttemptOutput:
    """The attempt ``attempt`` (default: the latest) of the task named ``task``, with its output files.

    Raises:
        CampaignInputError: no such task or attempt, or the name matches several tasks.
    """
    with readonly_snapshot(db) as snap:
        tid, key, cname, state, spec = _resolve_task(snap, task, campaign)
        rows = snap.rows("SELECT number, host, exit_cause, returncode, stdout_path, stderr_path FROM attempts "
                         "WHERE task_id = :t ORDER BY number", {"t": tid})
    if not rows:
        raise CampaignInputError(f"task {key} ({tid[:8]}…) has not been tried yet (it is {state})")
    by_number = {int(r[0]): r for r in rows}
    number = max(by_number) if attempt is None else attempt
    if number not in by_number:
        raise CampaignInputError(f"task {key} has no attempt {number} (it has {', '.join(map(str, by_number))})")
    _, host, cause, rc, out, err = by_number[number]
    workdir = spec.get("workdir")
    if out is None and workdir:  # not ended: where its worker writes
        out, err = (str(Path(workdir) / f"attempt{number}.{ext}") for ext in ("out", "err"))
    return AttemptOutput(tid, key, cname, state, number, len(rows), host, cause, rc,
                         Path(out) if out else None, Path(err) if err else None)


def tail_lines(path: Path, n: int) -> list[str]:
    """The last ``n`` lines of ``path`` (reading at most :data:`TAIL_MAX_BYTES` of its end); a note instead when
    the file cannot be read here."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(0, size - TAIL_MAX_BYTES)
            fh.seek(start)
            data = fh.read()
    except FileNotFoundError:
        return [f"(no file {path} here: the attempt has not written it yet, or it is on another machine)"]
    except OSError as exc:
        return [f"(cannot read {path}: {exc.strerror or exc})"]
    lines = data.decode("utf-8", errors="replace").splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # cut by the read window
    return lines[-n:]


def follow_attempt(att: AttemptOutput, streams: Sequence[str], *, db: str | None = None, poll_s: float = 0.5,
                   sleep: object = time.sleep) -> Iterator[tuple[str, str]]:
    """``(stream, line)`` for each line the attempt writes from now on, until it has ended (then what is left)."""
    paths = {name: (att.stdout if name == "stdout" else att.stderr) for name in streams}
    offsets = {name: _size(p) for name, p in paths.items()}
    partial = dict.fromkeys(paths, "")
    ended = att.ended
    while True:
        for name, path in paths.items():
            if path is None:
                continue
            chunk, offsets[name] = _read_from(path, offsets[name])
            text = partial[name] + chunk
            *complete, partial[name] = text.split("\n")
            for line in complete:
                yield name, line
        if ended:
            for name, rest in partial.items():
                if rest:
                    yield name, rest
            return
        ended = find_attempt(att.task_id, attempt=att.number, db=db).ended
        if not ended:
            sleep(poll_s)  # type: ignore[operator]


def _size(path: Path | None) -> int:
    try:
        return 0 if path is None else path.stat().st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int) -> tuple[str, int]:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(TAIL_MAX_BYTES)
    except OSError:
        return "", offset
    return data.decode("utf-8", errors="replace"), offset + len(data)
