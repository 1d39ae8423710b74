"""Overhead of the campaign path (submit, run, record in the database) against bare Parsl HTEX, same run.

* peer — bare Parsl: a ``python_app`` returning a small dict, on the same HighThroughputExecutor config
  (``sites.local.local_config``: loopback, same worker count, same ``parsl.log`` level), all N submitted at once.
* peer_parsl_debug_log — the same with ``parsl.log`` at Parsl's own default level (DEBUG, about eight records per
  task) instead of the site configuration's INFO: what the campaign path costed before its sites set the level.
* ours — the campaign path: a stage planning N ``campaign.apps.noop`` tasks run by the steering loop
  (:class:`campaign.steer.Steerer`) through ``make_dispatcher("local", {"engine": "parsl"})`` into a SQLite
  campaign database: every task created, its attempt begun, its result recorded (and committed) before the stage
  is told. ``--in-flight`` caps the tasks in flight (default N, like the peer).
* ours_run_default — the same with the tasks in flight ``campaign run`` keeps for this site
  (``SiteSpec.max_in_flight()``: the workers plus ``queued_tasks``, 32 by default).
* ours_workers_cap — the same with at most ``workers`` tasks in flight (no task queued behind a busy worker: every
  result makes a round trip through the driver before the next task starts; what ``campaign run`` did before
  ``queued_tasks``).
* ours_per_task_tx — the same tasks, but the ledger written one transaction per state change from a plain
  loop (create, begin, record for each task: the campaign path before batching), for the before/after figure.
* ours_dispatch_only — the campaign dispatcher without any database.

Each variant starts its own DataFlowKernel (not timed) once the previous variant's processes have exited, warms
up, and collects its garbage; the clock runs from the stage's start (task creation included) to its last result
recorded. Variants are interleaved; medians over repetitions. The
last line is one JSON object; ``ratio`` is the median over repetitions of ``peer / ours`` within a repetition
(> 1: we are faster), with their range and the ratio of the medians; the other variants' ratios are ratios of
medians.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import wait
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from campaign.dispatch import make_dispatcher
from campaign.dispatch.environment import ensure_env_on_path
from campaign.ledger import Ledger
from campaign.recipe import parse_recipe
from campaign.stages.base import PlannedTask, StageContext
from campaign.steer import Steerer
from campaign.tasks import TaskResult, TaskSpec, TaskState
from db.engine import make_engine
from db.migrate import ensure_schema


def bare_noop(i: int) -> dict[str, Any]:
    """The peer's task: nothing, a small dict back."""
    return {"i": i}


def run_peer(n: int, workers: int, run_dir: Path, parsl_default_logging: bool = False) -> float:
    """Bare Parsl HTEX: seconds for ``n`` no-op apps (``parsl_default_logging``: ``parsl.log`` at Parsl's own
    default level, DEBUG, instead of the site configuration's)."""
    from parsl import python_app
    from parsl.dataflow.dflow import DataFlowKernel

    from sites.local import local_config

    ensure_env_on_path()
    config = local_config(max_workers=workers, run_dir=str(run_dir))
    if parsl_default_logging:
        config.initialize_logging = True
    dfk = DataFlowKernel(config)
    try:
        app = python_app(bare_noop, data_flow_kernel=dfk)
        [f.result() for f in [app(i) for i in range(20)]]
        gc.collect()  # this run's clock does not pay for an earlier run's garbage
        t0 = time.perf_counter()
        futs = [app(i) for i in range(n)]
        wait(futs)
        dt = time.perf_counter() - t0
        assert all(f.result()["i"] == i for i, f in enumerate(futs))
    finally:
        dfk.cleanup()
    return dt


def _spec(run_dir: Path, i: int) -> TaskSpec:
    return TaskSpec(kind="noop", app="campaign.apps.noop", workdir=str(run_dir / "w" / str(i)), config={"payload": i})


class NoopStage:
    """A stage of ``n`` no-op tasks that checks each result it is told."""

    name = "noop"
    kind = "noop"

    def __init__(self, n: int, run_dir: Path) -> None:
        self.n = n
        self.run_dir = run_dir
        self.told = 0

    def start(self, ctx: StageContext) -> list[PlannedTask]:
        return [PlannedTask(f"noop/{i}", _spec(self.run_dir, i)) for i in range(self.n)]

    def on_done(self, ctx: StageContext, task: Any, result: TaskResult) -> list[PlannedTask]:
        assert result.result is not None and task.key == f"noop/{result.result['payload']}"
        self.told += 1
        return []

    def on_failed(self, ctx: StageContext, task: Any, result: TaskResult | None) -> list[PlannedTask]:
        raise AssertionError(f"no-op task {task.key} failed: {result.error if result else ''}")

    def finish(self, ctx: StageContext) -> str:
        return "done"


def _open(run_dir: Path) -> tuple[Ledger, int, int]:
    engine = make_engine(f"sqlite:///{run_dir / 'campaign.db'}")
    ensure_schema(engine)
    ledger = Ledger(engine)
    cid = ledger.open_campaign(name="bench", recipe_text="campaign: bench", recipe_hash="0" * 64, site="local").id
    return ledger, cid, ledger.stage(cid, "noop", "noop").id


def _check_db(ledger: Ledger, cid: int, n: int) -> None:
    assert ledger.count_tasks(cid, states=[TaskState.DONE]) == n
    from sqlalchemy import func, select

    from db import models as m

    with ledger.Session() as s:
        ok = s.scalar(select(func.count()).select_from(m.Attempt).where(m.Attempt.exit_cause == m.ExitCause.OK))
    assert ok == n, f"{ok} ok attempts recorded, expected {n}"


def _dispatcher(run_dir: Path, workers: int) -> Any:
    d = make_dispatcher("local", {"engine": "parsl", "max_workers": workers, "retries": 0}, run_dir)
    [f.result() for f in [d.submit(_spec(run_dir, -i - 1)) for i in range(20)]]  # warm-up
    return d


def run_steered(n: int, workers: int, run_dir: Path, in_flight: int) -> float:
    """The steering loop over the Parsl dispatcher into SQLite: seconds for ``n`` no-op tasks."""
    ledger, cid, sid = _open(run_dir)
    ctx = StageContext(recipe=parse_recipe("campaign: bench\n"), ledger=ledger, campaign_id=cid, stage_id=sid,
                       workdir=run_dir, site="local")
    d = _dispatcher(run_dir, workers)
    try:
        steer = Steerer(ledger, d, cid, "local", max_in_flight=in_flight, concurrency=workers,
                        on_progress=lambda p: None)
        d.on_attempt = steer.report_attempt
        stage = NoopStage(n, run_dir)
        gc.collect()  # this run's clock does not pay for an earlier run's garbage
        t0 = time.perf_counter()
        status = steer.run_stage(stage, ctx)
        dt = time.perf_counter() - t0
    finally:
        d.shutdown()
    assert status == "done" and stage.told == n
    _check_db(ledger, cid, n)
    return dt


def site_in_flight(workers: int) -> int:
    """Tasks in flight ``campaign run`` keeps on the local site with ``workers`` workers."""
    return parse_recipe(f"campaign: bench\nsite:\n  name: local\n  workers: {workers}\n").site.max_in_flight()


def run_per_task_tx(n: int, workers: int, run_dir: Path) -> float:
    """The ledger written one transaction per state change (create, begin, record per task), all submitted."""
    ledger, cid, sid = _open(run_dir)
    d = _dispatcher(run_dir, workers)
    try:
        specs = [_spec(run_dir, i) for i in range(n)]
        gc.collect()  # this run's clock does not pay for an earlier run's garbage
        t0 = time.perf_counter()
        futs = []
        for i, s in enumerate(specs):
            task = ledger.create_task(cid, sid, f"noop/{i}", s)
            attempt = ledger.begin_attempt(task.id, site="local", executor=d.name)
            futs.append(d.submit(s.model_copy(update={"task_id": task.id, "attempt": attempt})))
        for f in futs:
            ledger.record_attempt(f.result(), final=True)
        dt = time.perf_counter() - t0
    finally:
        d.shutdown()
    _check_db(ledger, cid, n)
    return dt


def run_dispatch_only(n: int, workers: int, run_dir: Path) -> float:
    """The campaign dispatcher alone: seconds for ``n`` no-op TaskSpecs, no database."""
    d = _dispatcher(run_dir, workers)
    try:
        specs = [_spec(run_dir, i) for i in range(n)]
        gc.collect()  # this run's clock does not pay for an earlier run's garbage
        t0 = time.perf_counter()
        futs = [d.submit(s) for s in specs]
        wait(futs)
        results = [f.result() for f in futs]
        dt = time.perf_counter() - t0
    finally:
        d.shutdown()
    assert all(r.ok and r.result["payload"] == i for i, r in enumerate(results))
    return dt


def wait_for_children(timeout_s: float = 30.0) -> None:
    """Wait until the processes an earlier run started (its interchange and workers, shutting down) are gone, so
    that they do not share the cores with the next run."""
    deadline = time.monotonic() + timeout_s
    me = psutil.Process()
    while me.children(recursive=True) and time.monotonic() < deadline:
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=9,
                        help="repetitions (the ratio is the median over them; pairs vary by +-10%% on a busy machine)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=0, help="ours: tasks in flight at most (0: all)")
    parser.add_argument("--quick", action="store_true", help="200 tasks, 2 repetitions")
    parser.add_argument("--only", default="", help="comma-separated variants to run (default: all)")
    args = parser.parse_args()
    n, reps = (200, 2) if args.quick else (args.tasks, args.reps)
    in_flight = args.in_flight or n
    runs = {
        "peer": lambda d: run_peer(n, args.workers, d),
        "peer_parsl_debug_log": lambda d: run_peer(n, args.workers, d, parsl_default_logging=True),
        "ours": lambda d: run_steered(n, args.workers, d, in_flight),
        "ours_run_default": lambda d: run_steered(n, args.workers, d, site_in_flight(args.workers)),
        "ours_workers_cap": lambda d: run_steered(n, args.workers, d, args.workers),
        "ours_per_task_tx": lambda d: run_per_task_tx(n, args.workers, d),
        "ours_dispatch_only": lambda d: run_dispatch_only(n, args.workers, d),
    }
    if args.only:
        runs = {k: v for k, v in runs.items() if k in {"peer", "ours", *args.only.split(",")}}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(reps):
        order = list(runs)
        if rep % 2:
            order.reverse()
        for which in order:
            wait_for_children()
            with tempfile.TemporaryDirectory(prefix=f"bench-{which}-") as tmp:
                dt = runs[which](Path(tmp))
            times[which].append(dt)
            print(f"rep {rep} {which:>20}: {dt:.3f} s for {n} tasks ({n / dt:.0f} tasks/s)", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    # the ratio of one repetition's two runs (a few seconds apart) is not moved by the machine getting slower or
    # faster between repetitions (seen here: the same code 1.6 s in one repetition, 2.5 s in the next)
    pairs = [p / o for p, o in zip(times["peer"], times["ours"], strict=True)]
    print(json.dumps({
        "benchmark": "dispatch_noop_wall",
        "ours": round(med["ours"], 4),
        "peer": round(med["peer"], 4),
        "unit": "s",
        "ratio": round(statistics.median(pairs), 3),
        "ratio_range": [round(min(pairs), 3), round(max(pairs), 3)],
        "ratio_of_medians": round(med["peer"] / med["ours"], 3),
        **{k: round(v, 4) for k, v in med.items() if k not in ("ours", "peer")},
        **{f"ratio_{k[5:]}": round(med["peer"] / v, 3) for k, v in med.items() if k.startswith("ours_")},
        **({"ratio_vs_parsl_debug_log": round(med["peer_parsl_debug_log"] / med["ours"], 3)}
           if "peer_parsl_debug_log" in med else {}),
        "includes_db_recording": True,
        "db": "sqlite",
        "tasks": n,
        "in_flight": in_flight,
        "reps": reps,
        "workers": args.workers,
        "peer_name": "bare Parsl HTEX python_app, same site config (parsl.log at INFO)",
    }))


if __name__ == "__main__":
    main()
