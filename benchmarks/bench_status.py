"""``campaign status`` on a SQLite campaign database with a million tasks, against a naive ORM peer.

The database is made fast with ``executemany`` on the migrated schema: one campaign (plus a small second one
that the queries must filter out), six stages, N tasks spread over them (most DONE, 2 % FAILED, a few hundred
in flight), one attempt per task (failed ones with an exit cause and an error, in-flight ones without an end),
and six HPO campaigns of 200 trials.

* ours — :func:`campaign.status.collect_status` (plain SQL through :func:`db.readonly.readonly_snapshot`): stages with tasks by state, best
  objective per HPO campaign, attempts in flight (host, elapsed), failures by cause with the latest error.
* peer — the naive way with the same ORM: load every task and every attempt row of the campaign as objects
  and count in Python.

Both read the same file after a warm-up read (page cache warm); medians over repetitions. The query plans
of ours are printed so that a missing index shows up as a SCAN. Last line: one JSON object,
``ratio = peer / ours`` (> 1: ours is faster).
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
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from campaign.report.database import readonly_engine
from campaign.status import collect_status
from db import models as m
from db.engine import make_engine
from db.migrate import ensure_schema

STAGES = ("preprocess", "hpo", "promote", "train", "screen", "finetune")
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S.%f")


def make_database(path: Path, n_tasks: int, in_flight: int = 300) -> None:
    """Write the schema with Alembic, then the rows with executemany (one transaction per table)."""
    ensure_schema(make_engine(f"sqlite:///{path}"))
    con = sqlite3.connect(path)
    con.execute("PRAGMA synchronous = OFF")
    con.execute("PRAGMA journal_mode = WAL")
    now = _ts(T0)
    for cid, name in ((1, "big"), (2, "other")):
        con.execute("INSERT INTO campaigns (id, name, recipe_text, recipe_hash, code_version, site, status, "
                    "created_at, started_at) VALUES (?, ?, '', 'x', '0.1', 'local', 'running', ?, ?)",
                    (cid, name, now, now))
        con.executemany("INSERT INTO stages (id, campaign_id, name, kind, status, config, created_at) "
                        "VALUES (?, ?, ?, ?, 'running', '{}', ?)",
                        [((cid - 1) * 10 + i + 1, cid, s, s, now) for i, s in enumerate(STAGES)])
    causes = ("error", "walltime", "node_lost", "killed")

    def rows(cid: int, n: int):  # -> (task row, attempt row)
        for i in range(n):
            tid = uuid.uuid4().hex
            stage = (cid - 1) * 10 + 1 + (i * len(STAGES)) // n
            start = T0 + timedelta(seconds=i)
            if i < in_flight:
                state, cause, end = "RUNNING", None, None
            elif i % 50 == 0:
                state, cause, end = "FAILED", causes[(i // 50) % 4], _ts(start + timedelta(minutes=3))
            else:
                state, cause, end = "DONE", "ok", _ts(start + timedelta(minutes=3))
            yield ((tid, cid, stage, f"k{i}", "trial", "models.train", '{"kind": "trial"}', state, 0, 0, now, now),
                   (tid, 1, "local", f"node{i % 64:03d}", 1, 1, 0, 2, _ts(start), _ts(start), end, cause,
                    None if cause in (None, "ok") else f"RuntimeError: failure {i}"))

    for cid, n in ((1, n_tasks), (2, max(1000, n_tasks // 100))):
        batch: list = []
        for pair in rows(cid, n):
            batch.append(pair)
            if len(batch) == 100_000:
                _flush(con, batch)
                batch = []
        _flush(con, batch)
    trials = []
    for h, fam in enumerate(("painn", "schnet", "egnn", "dimenet++", "mace", "pna")):
        for k in range(200):
            trials.append((1, fam, fam, k, '{"hidden": 32, "lr": 0.001}', 0.1 + ((h * 7 + k * 13) % 97) / 100,
                           "done", now))
    con.executemany("INSERT INTO trials (campaign_id, hpo, family, number, config, objective, status, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", trials)
    con.commit()
    con.execute("ANALYZE")
    con.close()


def _flush(con: sqlite3.Connection, batch: list) -> None:
    con.executemany("INSERT INTO tasks (id, campaign_id, stage_id, key, kind, app, spec, state, priority, "
                    "charged_failures, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", [b[0] for b in batch])
    con.executemany("INSERT INTO attempts (task_id, number, site, host, nodes, ranks, gpus, cpus, submitted_at, "
                    "started_at, ended_at, exit_cause, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [b[1] for b in batch])
    con.commit()


def ours(url: str) -> dict:
    snap = collect_status(url, "big")
    return {"tasks": {k: v for k, v in snap.tasks_by_state().items() if v}, "running": snap.running_total,
            "failures": {f.cause: f.attempts for f in snap.failures}}


def peer(url: str) -> dict:
    eng = make_engine(url)
    with Session(eng) as s:
        camp = s.scalar(select(m.Campaign).where(m.Campaign.name == "big"))
        tasks = s.scalars(select(m.Task).where(m.Task.campaign_id == camp.id)).all()
        ids = {t.id for t in tasks}
        attempts = [a for a in s.scalars(select(m.Attempt)).all() if a.task_id in ids]
        tasks_by_state = Counter(t.state.value for t in tasks)
        running = sum(1 for a in attempts if a.ended_at is None)
        failures = Counter(a.exit_cause.value for a in attempts if a.exit_cause not in (None, m.ExitCause.OK))
    eng.dispose()
    return {"tasks": dict(tasks_by_state), "running": running, "failures": dict(failures)}


def plans(url: str) -> None:
    """EXPLAIN QUERY PLAN of the status queries (a full-table SCAN would mean a missing index)."""
    eng = readonly_engine(url)
    queries = {
        "tasks by stage/state": "SELECT stage_id, state, count(*) FROM tasks WHERE stage_id IN (1,2,3,4,5,6) "
                                "GROUP BY stage_id, state",
        "in flight": "SELECT count(*) FROM attempts a JOIN tasks t ON t.id = a.task_id WHERE t.campaign_id = 1 "
                     "AND t.state IN ('SUBMITTED','RUNNING') AND a.ended_at IS NULL",
        "failures": "SELECT a.exit_cause, count(*) FROM attempts a JOIN tasks t ON t.id = a.task_id WHERE "
                    "t.campaign_id = 1 AND a.exit_cause IN ('error','walltime','node_lost','killed') "
                    "GROUP BY a.exit_cause",
        "best trial": "SELECT hpo, min(objective) FROM trials WHERE campaign_id = 1 GROUP BY hpo",
    }
    with eng.connect() as conn:
        for name, q in queries.items():
            plan = "; ".join(r[-1] for r in conn.execute(text("EXPLAIN QUERY PLAN " + q)))
            print(f"plan {name}: {plan}", file=sys.stderr)
    eng.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peer-repeats", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.db"
        t = time.perf_counter()
        make_database(path, args.tasks)
        print(f"made {args.tasks} tasks in {time.perf_counter() - t:.1f} s ({path.stat().st_size / 1e6:.0f} MB)",
              file=sys.stderr)
        url = f"sqlite:///{path}"
        plans(url)
        ref = ours(url)  # warm-up: page cache
        t_ours = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            got = ours(url)
            t_ours.append(time.perf_counter() - t)
        t_peer = []
        for _ in range(args.peer_repeats):
            t = time.perf_counter()
            want = peer(url)
            t_peer.append(time.perf_counter() - t)
        if got != want or got != ref:
            raise SystemExit(f"ours and peer disagree: {got} vs {want}")
        print(f"status: {got}", file=sys.stderr)
    o, p = statistics.median(t_ours), statistics.median(t_peer)
    print(json.dumps({"benchmark": "status_million_tasks", "tasks": args.tasks, "ours": round(o, 4),
                      "peer": round(p, 3), "unit": "s", "ratio": round(p / o, 1),
                      "peer_is": "naive ORM load of every task and attempt row, counted in Python"}))


if __name__ == "__main__":
    main()
