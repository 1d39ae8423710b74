"""A generic driver-kill harness: run ``campaign run RECIPE --db URL`` as a subprocess, SIGKILL it at a chosen
point, resume it with ``campaign resume``, and check the database's invariants.

Any recipe works (the preprocess stage today, HPO and later stages as they land). A kill point is one of:

* ``KillPoint(done=N)``: once at least ``N`` tasks of the campaign are DONE in the database;
* ``KillPoint(attempts=N)``: once at least ``N`` attempt rows exist (a task is in flight);
* ``KillPoint(delay_s=T)``: ``T`` seconds after the driver started;
* ``KillPoint(sql=..., at_least=N)``: once a read-only count query returns at least ``N`` (e.g. told trials).

The database is polled read-only (``db.readonly``), exactly as a user's ``campaign sql`` would see it.

Example (what the tests do)::

    h = DriverKillHarness(recipe, url, cwd=tmp_path)
    h.run_killed(KillPoint(done=2))          # SIGKILL once 2 tasks are DONE
    h.resume()                                # campaign resume NAME --db URL, to completion
    assert check_invariants(url, "my-campaign") == []
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from db.engine import DatabaseError
from db.readonly import QueryError, run_readonly

#: The ``campaign`` console script of this interpreter's environment.
CAMPAIGN_EXE = str(Path(sys.executable).with_name("campaign"))


@dataclass(frozen=True)
class KillPoint:
    """When to SIGKILL the driver (exactly one of the fields, or ``sql`` with ``at_least``)."""

    done: int | None = None
    attempts: int | None = None
    delay_s: float | None = None
    sql: str | None = None
    at_least: int = 1

    def describe(self) -> str:
        """A short label (used as a test id)."""
        if self.done is not None:
            return f"done>={self.done}"
        if self.attempts is not None:
            return f"attempts>={self.attempts}"
        if self.delay_s is not None:
            return f"after {self.delay_s:.1f}s"
        return f"sql>={self.at_least}"


@dataclass
class KillOutcome:
    """What happened to one killed run."""

    point: KillPoint
    killed: bool  # False: the run finished before the kill point was reached
    returncode: int | None
    elapsed_s: float
    done_at_kill: int
    attempts_at_kill: int


def _count(url: str, sql: str) -> int:
    """A count from the database, 0 while it does not exist yet or its schema is not created yet."""
    try:
        rows = run_readonly(sql, url=url).rows
    except (DatabaseError, QueryError):
        return 0
    return int(rows[0][0] or 0) if rows else 0


def done_count(url: str, campaign: str) -> int:
    """DONE tasks of the campaign."""
    return _count(url, "SELECT COUNT(*) FROM tasks t JOIN campaigns c ON c.id = t.campaign_id "
                       f"WHERE c.name = '{campaign}' AND t.state = 'DONE'")


def attempt_count(url: str, campaign: str) -> int:
    """Attempt rows of the campaign."""
    return _count(url, "SELECT COUNT(*) FROM attempts a JOIN tasks t ON t.id = a.task_id "
                       f"JOIN campaigns c ON c.id = t.campaign_id WHERE c.name = '{campaign}'")


@dataclass
class DriverKillHarness:
    """Runs, kills and resumes one campaign.

    Args:
        recipe: The recipe file.
        url: The database URL (``--db``).
        campaign: The campaign name in the recipe.
        cwd: Working directory of the driver (the recipe's ``workdir`` is relative to it).
        timeout_s: Bound on each run (a run past it is killed and the harness raises).
        env: Extra environment variables for the driver.
    """

    recipe: Path
    url: str
    campaign: str
    cwd: Path
    timeout_s: float = 600.0
    env: dict[str, str] = field(default_factory=dict)
    outcomes: list[KillOutcome] = field(default_factory=list)

    def _env(self) -> dict[str, str]:
        return {**os.environ, "OMP_NUM_THREADS": "1", "CAMPAIGN_DB": "", **self.env}

    def _start(self, args: Sequence[str]) -> subprocess.Popen[bytes]:
        log = (self.cwd / f"driver-{len(self.outcomes)}-{args[0]}.log").open("wb")
        # its own session, so that the pool it starts can be cleaned up after the driver is killed
        return subprocess.Popen([CAMPAIGN_EXE, *args, "--db", self.url, "--quiet"], cwd=self.cwd, env=self._env(),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _reached(self, point: KillPoint, started: float) -> bool:
        if point.delay_s is not None:
            return time.monotonic() - started >= point.delay_s
        if point.done is not None:
            return done_count(self.url, self.campaign) >= point.done
        if point.attempts is not None:
            return attempt_count(self.url, self.campaign) >= point.attempts
        assert point.sql is not None
        return _count(self.url, point.sql) >= point.at_least

    def run_killed(self, point: KillPoint, *, args: Sequence[str] | None = None, poll_s: float = 0.05) -> KillOutcome:
        """Start ``campaign run RECIPE`` (or ``args``) and SIGKILL the driver at ``point``.

        Only the driver process is killed (as when its node dies); its worker pool, which lives in the same
        session, is reaped afterwards so that the machine is not left loaded. Apps run in their own sessions
        and finish on their own, as on a cluster.
        """
        proc = self._start(list(args) if args else ["run", str(self.recipe)])
        started = time.monotonic()
        killed = False
        try:
            while proc.poll() is None:
                if time.monotonic() - started > self.timeout_s:
                    raise TimeoutError(f"driver still running after {self.timeout_s} s")
                if self._reached(point, started):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed = True
                    break
                time.sleep(poll_s)
            proc.wait(timeout=30)
        finally:
            _kill_session(proc.pid)
        out = KillOutcome(point, killed, proc.returncode, time.monotonic() - started,
                          done_count(self.url, self.campaign), attempt_count(self.url, self.campaign))
        self.outcomes.append(out)
        return out

    def resume(self, *, by_name: bool = True) -> subprocess.CompletedProcess[bytes]:
        """``campaign resume NAME`` (or ``campaign run RECIPE``) to completion; returns the finished process."""
        proc = self._start(["resume", self.campaign] if by_name else ["run", str(self.recipe)])
        try:
            proc.wait(timeout=self.timeout_s)
        finally:
            _kill_session(proc.pid)
        return subprocess.CompletedProcess(proc.args, proc.returncode)


def _kill_session(sid: int) -> None:
    """SIGKILL every process left in session ``sid`` (the driver's worker pool)."""
    try:
        os.killpg(sid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ------------------------------------------------------------------------------------------------ invariants
Check = Callable[[str, str], list[str]]


def _rows(url: str, sql: str) -> list[tuple[object, ...]]:
    return run_readonly(sql, url=url).rows


def check_invariants(url: str, campaign: str, *, extra: Sequence[Check] = (), require_done: bool = True) -> list[str]:
    """Problems with the database after a campaign finished (an empty list: consistent).

    Checked: the campaign ended ``done`` and every task is DONE (``require_done``); every DONE task has exactly
    one successful attempt; no task key appears twice in the campaign; every attempt is closed (has an exit
    cause); attempt numbers of a task are 1..n without gaps or repeats; every artifact exists with its
    recorded sha256 and size; every dataset's store exists; trials (when any) are unique per HPO campaign and
    number. ``extra`` checks ``(url, campaign) -> problems`` are run too (for later stages).
    """
    from models.atomic_files import sha256_file

    problems: list[str] = []
    rows = _rows(url, f"SELECT id, status FROM campaigns WHERE name = '{campaign}'")
    if not rows:
        return [f"no campaign {campaign!r} in the database"]
    cid, status = rows[0]
    if require_done and status != "done":
        problems.append(f"campaign status is {status!r}, not 'done'")
    if require_done:
        for key, state in _rows(url, f"SELECT key, state FROM tasks WHERE campaign_id = {cid} AND state != 'DONE'"):
            problems.append(f"task {key} ended {state}")
    for key, n in _rows(url, f"SELECT key, COUNT(*) FROM tasks WHERE campaign_id = {cid} GROUP BY key HAVING COUNT(*) > 1"):
        problems.append(f"task key {key} appears {n} times")
    for key, n in _rows(url, "SELECT t.key, SUM(CASE WHEN a.exit_cause = 'ok' THEN 1 ELSE 0 END) FROM tasks t "
                             "LEFT JOIN attempts a ON a.task_id = t.id "
                             f"WHERE t.campaign_id = {cid} AND t.state = 'DONE' GROUP BY t.key"):
        if n != 1:
            problems.append(f"DONE task {key} has {n} successful attempts (expected exactly 1)")
    for key, number in _rows(url, "SELECT t.key, a.number FROM attempts a JOIN tasks t ON t.id = a.task_id "
                                  f"WHERE t.campaign_id = {cid} AND a.exit_cause IS NULL"):
        problems.append(f"attempt {number} of task {key} was never closed")
    numbers: dict[object, list[int]] = {}
    for key, number in _rows(url, "SELECT t.key, a.number FROM attempts a JOIN tasks t ON t.id = a.task_id "
                                  f"WHERE t.campaign_id = {cid} ORDER BY t.key, a.number"):
        numbers.setdefault(key, []).append(int(number))  # type: ignore[call-overload]
    for key, ns in numbers.items():
        if ns != list(range(1, len(ns) + 1)):
            problems.append(f"task {key} has attempt numbers {ns}")
    for path, sha, size in _rows(url, "SELECT DISTINCT a.path, a.sha256, a.bytes FROM artifacts a "
                                      "LEFT JOIN tasks t ON t.id = a.task_id "
                                      f"WHERE t.campaign_id = {cid} OR a.task_id IS NULL"):
        p = Path(str(path))
        if not p.is_file():
            problems.append(f"artifact {p} is missing")
        elif p.stat().st_size != size or sha256_file(p) != sha:
            problems.append(f"artifact {p} does not match its recorded sha256/size")
    for name, store in _rows(url, "SELECT d.name, d.store_path FROM datasets d JOIN tasks t ON t.id = d.task_id "
                                  f"WHERE t.campaign_id = {cid}"):
        if not Path(str(store)).is_dir():
            problems.append(f"dataset {name}: store {store} is missing")
    for hpo, number, n in _rows(url, f"SELECT hpo, number, COUNT(*) FROM trials WHERE campaign_id = {cid} "
                                     "GROUP BY hpo, number HAVING COUNT(*) > 1"):
        problems.append(f"trial {hpo}/{number} recorded {n} times")
    for check in extra:
        problems.extend(check(url, campaign))
    return problems
