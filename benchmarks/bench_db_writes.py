"""Task state changes recorded per second through the campaign's database layer, SQLite and PostgreSQL.

* ours — :class:`campaign.ledger.Ledger` as the steering loop uses it: tasks are submitted and come back in
  batches (``--batch``, default 50); each batch's submissions are one ``claim`` transaction (READY ->
  SUBMITTED, an attempt row each) and its results one ``record`` transaction (SUBMITTED -> DONE, the
  attempt closed with cause, host, batch job id and times, the result stored).
* ours_single — the same through ``begin_attempt`` / ``record_attempt``, one transaction per state change.
* peer — what a naive script does: the same state changes as one autocommit ``UPDATE tasks SET state = ...``
  per change with plain ``sqlite3`` / ``psycopg`` (default connection settings), and nothing else written.

Each variant gets a fresh database (a file, or a new PostgreSQL database on 127.0.0.1:5432 as user postgres;
PostgreSQL is skipped, with a note, when it does not answer) holding the same N READY tasks, created untimed.
A state change is one task moving one step (READY -> SUBMITTED, SUBMITTED -> DONE): 2 N per variant. The last
line is one JSON object: ``ours``/``peer`` in state changes per second on SQLite, ``ratio = ours / peer``, and
the PostgreSQL figures beside them.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from campaign.ledger import Ledger
from campaign.tasks import ExitCause, TaskResult, TaskSpec, TaskState, utcnow
from db.engine import make_engine
from db.migrate import ensure_schema

PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}


@contextmanager
def sqlite_db() -> Iterator[tuple[str, Callable[[], Any]]]:
    """A fresh SQLite file: its SQLAlchemy URL and a plain ``sqlite3`` connection factory (autocommit)."""
    with tempfile.TemporaryDirectory(prefix="bench-db-") as tmp:
        path = Path(tmp) / "campaign.db"
        yield f"sqlite:///{path}", lambda: sqlite3.connect(path, isolation_level=None)


@contextmanager
def postgres_db() -> Iterator[tuple[str, Callable[[], Any]]]:
    """A fresh PostgreSQL database: its SQLAlchemy URL and a plain ``psycopg`` connection factory (autocommit)."""
    import psycopg

    name = f"bench_db_writes_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(**PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"postgresql+psycopg://{PG_ADMIN['user']}@{PG_ADMIN['host']}:{PG_ADMIN['port']}/{name}"
        yield url, lambda: psycopg.connect(**{**PG_ADMIN, "dbname": name}, autocommit=True)
    finally:
        with psycopg.connect(**PG_ADMIN, autocommit=True) as admin:
            admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


def postgres_up() -> str | None:
    """``None`` when PostgreSQL answers on 127.0.0.1:5432, else why not."""
    try:
        import psycopg

        with psycopg.connect(**PG_ADMIN, connect_timeout=3):
            return None
    except Exception as exc:  # any failure means: no server to measure
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def _prepare(url: str, n: int) -> tuple[Ledger, list[str]]:
    """A migrated database with one campaign, one stage and ``n`` READY tasks (untimed)."""
    engine = make_engine(url)
    ensure_schema(engine)
    ledger = Ledger(engine)
    cid = ledger.open_campaign(name="bench", recipe_text="campaign: bench", recipe_hash="0" * 64, site="local").id
    sid = ledger.stage(cid, "noop", "noop").id
    specs = [(f"noop/{i}", TaskSpec(kind="noop", app="campaign.apps.noop", workdir=f"/tmp/w/{i}",
                                    config={"payload": i})) for i in range(n)]
    ledger.create_tasks(cid, sid, specs)
    return ledger, [t.id for t in ledger.tasks(cid)]


def _result(task_id: str, attempt: int, i: int) -> TaskResult:
    now = utcnow()
    return TaskResult(task_id=task_id, attempt=attempt, exit_cause=ExitCause.OK, returncode=0,
                      result={"status": "ok", "payload": i}, host="node0001", batch_job_id="123456",
                      executor="parsl:htex", started_at=now, ended_at=now)


def run_ours(url: str, n: int, batch: int) -> float:
    """Seconds for 2 n state changes through the ledger, in batches of ``batch``."""
    ledger, _ = _prepare(url, n)
    try:
        t0 = time.perf_counter()
        for k in range(0, n, batch):
            specs = ledger.claim(1, 1, batch, site="local", executor="parsl")
            ledger.record([_result(sp.task_id, sp.attempt, k + j) for j, sp in enumerate(specs)])
        dt = time.perf_counter() - t0
        assert ledger.count_tasks(1, states=[TaskState.DONE]) == n
    finally:
        ledger.engine.dispose()
    return dt


def run_ours_single(url: str, n: int) -> float:
    """Seconds for 2 n state changes through the ledger, one transaction each."""
    ledger, ids = _prepare(url, n)
    try:
        t0 = time.perf_counter()
        for i, t in enumerate(ids):
            attempt = ledger.begin_attempt(t, site="local", executor="parsl")
            ledger.record_attempt(_result(t, attempt, i))
        dt = time.perf_counter() - t0
        assert ledger.count_tasks(1, states=[TaskState.DONE]) == n
    finally:
        ledger.engine.dispose()
    return dt


def run_peer(url: str, connect: Callable[[], Any], n: int, placeholder: str) -> float:
    """Seconds for 2 n autocommit ``UPDATE``s, one per state change, with the plain driver."""
    ledger, ids = _prepare(url, n)
    ledger.engine.dispose()
    conn = connect()
    try:
        sql = f"UPDATE tasks SET state = {placeholder} WHERE id = {placeholder}"
        t0 = time.perf_counter()
        for t in ids:
            conn.execute(sql, ("SUBMITTED", t))
            conn.execute(sql, ("DONE", t))
        dt = time.perf_counter() - t0
        done = conn.execute("SELECT COUNT(*) FROM tasks WHERE state = 'DONE'").fetchone()[0]
        assert done == n, done
    finally:
        conn.close()
    return dt


def measure(db: Callable[[], Any], placeholder: str, n: int, batch: int, reps: int) -> dict[str, float]:
    """Median state changes per second of each variant on one backend."""
    rates: dict[str, list[float]] = {"ours": [], "ours_single": [], "peer": []}
    for rep in range(reps):
        order = list(rates) if rep % 2 == 0 else list(reversed(rates))
        for which in order:
            with db() as (url, connect):
                if which == "ours":
                    dt = run_ours(url, n, batch)
                elif which == "ours_single":
                    dt = run_ours_single(url, n)
                else:
                    dt = run_peer(url, connect, n, placeholder)
            rates[which].append(2 * n / dt)
            print(f"rep {rep} {which:>12}: {2 * n / dt:8.0f} state changes/s ({2 * n} in {dt:.3f} s)", flush=True)
    return {k: statistics.median(v) for k, v in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per variant (2 state changes each)")
    parser.add_argument("--batch", type=int, default=50, help="tasks per ledger transaction (ours)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="500 tasks, 1 repetition")
    args = parser.parse_args()
    n, reps = (500, 1) if args.quick else (args.tasks, args.reps)
    print("SQLite:", flush=True)
    lite = measure(sqlite_db, "?", n, args.batch, reps)
    out: dict[str, Any] = {
        "benchmark": "db_state_changes_per_s",
        "ours": round(lite["ours"]),
        "peer": round(lite["peer"]),
        "unit": "state changes/s",
        "ratio": round(lite["ours"] / lite["peer"], 3),
        "ours_single_tx": round(lite["ours_single"]),
        "ratio_single_tx": round(lite["ours_single"] / lite["peer"], 3),
    }
    why_not = postgres_up()
    if why_not is None:
        print("PostgreSQL:", flush=True)
        pg = measure(postgres_db, "%s", n, args.batch, reps)
        out.update({
            "postgres_ours": round(pg["ours"]),
            "postgres_peer": round(pg["peer"]),
            "postgres_ratio": round(pg["ours"] / pg["peer"], 3),
            "postgres_ours_single_tx": round(pg["ours_single"]),
            "postgres_ratio_single_tx": round(pg["ours_single"] / pg["peer"], 3),
        })
    else:
        print(f"PostgreSQL skipped: not reachable on 127.0.0.1:5432 ({why_not})", flush=True)
        out["postgres_skipped"] = why_not
    out.update({"goal": ">= 1000 state changes/s", "tasks": n, "batch": args.batch, "reps": reps,
                "peer_name": "one autocommit UPDATE per state change (sqlite3 / psycopg, default settings)"})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
