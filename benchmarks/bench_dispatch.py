"""Overhead of the campaign's dispatch path against bare Parsl HTEX, for N no-op tasks in the same run.

* peer — bare Parsl: a ``python_app`` returning a small dict, on the same HighThroughputExecutor config
  (``sites.local.local_config``: loopback, same worker count).
* ours — the campaign path: ``make_dispatcher("local", {"engine": "parsl"})``, a ``TaskSpec`` of
  ``campaign.apps.noop`` per task (the worker writes its config and result files and returns a
  ``TaskResult`` by value), and — when the lead's ``campaign.ledger`` is importable — every task created,
  its attempt begun and its result recorded in a SQLite campaign database, as the steering loop does.
* ours_dispatch_only — the campaign path without the database.

Each variant starts its own DataFlowKernel (not timed), warms up, then times N tasks from first submit to
last result. Variants are interleaved; medians over repetitions. The last line is one JSON object;
``ratio = peer / ours`` (> 1: we are faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import wait
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from campaign.dispatch import make_dispatcher
from campaign.dispatch.environment import ensure_env_on_path
from campaign.tasks import TaskSpec


def bare_noop(i: int) -> dict[str, Any]:
    """The peer's task: nothing, a small dict back."""
    return {"i": i}


def run_peer(n: int, workers: int, run_dir: Path) -> float:
    """Bare Parsl HTEX: seconds for ``n`` no-op apps."""
    from parsl import python_app
    from parsl.dataflow.dflow import DataFlowKernel

    from sites.local import local_config

    ensure_env_on_path()
    dfk = DataFlowKernel(local_config(max_workers=workers, run_dir=str(run_dir)))
    try:
        app = python_app(bare_noop, data_flow_kernel=dfk)
        [f.result() for f in [app(i) for i in range(20)]]
        t0 = time.perf_counter()
        futs = [app(i) for i in range(n)]
        wait(futs)
        dt = time.perf_counter() - t0
        assert all(f.result()["i"] == i for i, f in enumerate(futs))
    finally:
        dfk.cleanup()
    return dt


def _ledger(run_dir: Path) -> Any | None:
    try:
        from campaign.ledger import Ledger
        from db.engine import make_engine
        from db.migrate import ensure_schema
    except ImportError:
        return None
    engine = make_engine(f"sqlite:///{run_dir / 'campaign.db'}")
    ensure_schema(engine)
    return Ledger(engine)


def run_ours(n: int, workers: int, run_dir: Path, record: bool) -> float:
    """The campaign path: seconds for ``n`` no-op TaskSpecs (with DB recording when ``record``)."""
    ledger = _ledger(run_dir) if record else None
    if record and ledger is None:
        raise RuntimeError("campaign.ledger is not available")
    camp_id = stage_id = 0
    if ledger is not None:
        camp = ledger.open_campaign(name="bench", recipe_text="bench", recipe_hash="0" * 64, site="local")
        camp_id = camp.id
        stage_id = ledger.stage(camp_id, "noop", "noop").id
    d = make_dispatcher("local", {"engine": "parsl", "max_workers": workers, "retries": 0}, run_dir)
    try:
        def spec(i: int) -> TaskSpec:
            return TaskSpec(kind="noop", app="campaign.apps.noop", workdir=str(run_dir / "w" / str(i)),
                            config={"payload": i})

        [f.result() for f in [d.submit(spec(-i - 1)) for i in range(20)]]
        specs = [spec(i) for i in range(n)]
        t0 = time.perf_counter()
        if ledger is None:
            futs = [d.submit(s) for s in specs]
            wait(futs)
            results = [f.result() for f in futs]
        else:
            futs = []
            for i, s in enumerate(specs):
                task = ledger.create_task(camp_id, stage_id, f"t{i}", s)
                attempt = ledger.begin_attempt(task.id, site="local", executor=d.name)
                futs.append(d.submit(s.model_copy(update={"task_id": task.id, "attempt": attempt})))
            results = []
            for f in futs:  # record in completion order would need wait(); results arrive in order anyway
                r = f.result()
                ledger.record_attempt(r, final=True)
                results.append(r)
        dt = time.perf_counter() - t0
        assert all(r.ok and r.result["payload"] == i for i, r in enumerate(results))
    finally:
        d.shutdown()
    return dt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="200 tasks, 2 repetitions")
    args = parser.parse_args()
    n, reps = (200, 2) if args.quick else (args.tasks, args.reps)
    record = _ledger(Path(tempfile.mkdtemp(prefix="bench-probe-"))) is not None
    times: dict[str, list[float]] = {"peer": [], "ours": [], "ours_dispatch_only": []}
    for rep in range(reps):
        order = ["peer", "ours", "ours_dispatch_only"]
        if rep % 2:
            order.reverse()
        for which in order:
            with tempfile.TemporaryDirectory(prefix=f"bench-{which}-") as tmp:
                if which == "peer":
                    dt = run_peer(n, args.workers, Path(tmp))
                elif which == "ours":
                    dt = run_ours(n, args.workers, Path(tmp), record=record)
                else:
                    dt = run_ours(n, args.workers, Path(tmp), record=False)
            times[which].append(dt)
            print(f"rep {rep} {which:>20}: {dt:.3f} s for {n} tasks ({n / dt:.0f} tasks/s)", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "benchmark": "dispatch_noop_wall",
        "ours": round(med["ours"], 4),
        "peer": round(med["peer"], 4),
        "unit": "s",
        "ratio": round(med["peer"] / med["ours"], 3),
        "ours_dispatch_only": round(med["ours_dispatch_only"], 4),
        "ratio_dispatch_only": round(med["peer"] / med["ours_dispatch_only"], 3),
        "includes_db_recording": record,
        "tasks": n,
        "reps": reps,
        "workers": args.workers,
        "peer_name": "bare Parsl HTEX python_app",
    }))


if __name__ == "__main__":
    main()
