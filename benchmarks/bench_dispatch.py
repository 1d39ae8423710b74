"""Overhead of the campaign path (submit, run, record in the database) against bare Parsl HTEX, same run.

* peer — bare Parsl: a ``python_app`` returning a small dict, on the same HighThroughputExecutor config
  (``sites.local.local_config``: loopback, same worker count, same ``parsl.log`` level), all N submitted at once.
* ours — the campaign path: a stage planning N ``campaign.apps.noop`` tasks run by the steering loop
  (:class:`campaign.steer.Steerer`) through ``make_dispatcher("local", {"engine": "parsl"})`` into a SQLite
  campaign database: every task created, claimed, its result recorded (and committed) before the stage is told.
  ``--in-flight`` caps the tasks in flight (default N, like the peer).
* ours_run_default — the same with the tasks in flight ``campaign run`` keeps for this site
  (``SiteSpec.max_in_flight()``: the workers plus ``queued_tasks``, 32 by default).
* peer_50ms / ours_50ms — the same with tasks that sleep 50 ms: how busy each keeps the workers
  (``busy = tasks x 50 ms / workers / wall``); ``ratio_busy_50ms`` is ours' busy fraction over the peer's.
* steering CPU per task (``--scaling``) — the steering thread's CPU time per task for 1,000 and 20,000 no-op
  tasks with a dispatcher that answers at once from a thread (no workers, no Parsl): the loop and the database
  alone. ``scaling_growth`` is the 20,000-task figure over the 1,000-task one (1.0: flat).

Each variant starts its own DataFlowKernel (not timed) once the previous variant's processes have exited, warms
up, and collects its garbage; the clock runs from the stage's start (task creation included) to its last result
recorded. Variants are interleaved; medians over repetitions. The last line is one JSON object; ``ratio`` is the
median over repetitions of ``peer / ours`` within a repetition (> 1: we are faster), with its range.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from campaign.dispatch import RetryPolicy, make_dispatcher
from campaign.dispatch.base import Dispatcher
from campaign.dispatch.environment import ensure_env_on_path
from campaign.ledger import Ledger
from campaign.recipe import parse_recipe
from campaign.stages.base import PlannedTask, StageContext
from campaign.steer import Steerer
from campaign.taskqueue import TaskQueue
from campaign.tasks import TaskResult, TaskSpec, TaskState
from campaign.worker import run_task
from db.engine import make_engine
from db.migrate import ensure_schema


def bare_noop(i: int, sleep_s: float = 0.0) -> dict[str, Any]:
    """The peer's task: nothing (or a sleep), a small dict back."""
    if sleep_s:
        import time  # the function travels by value to the worker, without this module's globals

        time.sleep(sleep_s)
    return {"i": i}


def run_peer(n: int, workers: int, run_dir: Path, sleep_s: float = 0.0) -> float:
    """Bare Parsl HTEX: seconds for ``n`` no-op apps (each sleeping ``sleep_s``)."""
    from parsl import python_app
    from parsl.dataflow.dflow import DataFlowKernel

    from sites.local import local_config

    ensure_env_on_path()
    config = local_config(max_workers=workers, run_dir=str(run_dir))
    dfk = DataFlowKernel(config)
    try:
        app = python_app(bare_noop, data_flow_kernel=dfk)
        [f.result() for f in [app(i) for i in range(20)]]
        gc.collect()  # this run's clock does not pay for an earlier run's garbage
        t0 = time.perf_counter()
        futs = [app(i, sleep_s) for i in range(n)]
        wait(futs)
        dt = time.perf_counter() - t0
        assert all(f.result()["i"] == i for i, f in enumerate(futs))
    finally:
        dfk.cleanup()
    return dt


def _spec(run_dir: Path, i: int, sleep_s: float = 0.0) -> TaskSpec:
    config: dict[str, Any] = {"payload": i, **({"sleep_s": sleep_s} if sleep_s else {})}
    return TaskSpec(kind="noop", app="campaign.apps.noop", workdir=str(run_dir / "w" / str(i)), config=config)


class NoopStage:
    """A stage of ``n`` no-op tasks that checks each result it is told."""

    name = "noop"
    kind = "noop"

    def __init__(self, n: int, run_dir: Path, sleep_s: float = 0.0) -> None:
        self.n = n
        self.run_dir = run_dir
        self.sleep_s = sleep_s
        self.told = 0

    def start(self, ctx: StageContext) -> list[PlannedTask]:
        return [PlannedTask(f"noop/{i}", _spec(self.run_dir, i, self.sleep_s)) for i in range(self.n)]

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
    d = make_dispatcher("local", {"engine": "parsl", "max_workers": workers}, run_dir)
    [f.result() for f in [d.submit(_spec(run_dir, -i - 1)) for i in range(20)]]  # warm-up
    return d


def _steer(ledger: Ledger, cid: int, sid: int, d: Any, in_flight: int, workers: int, stage: NoopStage,
           run_dir: Path) -> float:
    """Run ``stage`` through the steering loop; the wall seconds it took."""
    ctx = StageContext(recipe=parse_recipe("campaign: bench\n"), ledger=ledger, campaign_id=cid, stage_id=sid,
                       workdir=run_dir, site="local")
    steer = Steerer(TaskQueue(ledger, cid, site="local", executor=d.name, policy=RetryPolicy(0, 0)), d,
                    max_in_flight=in_flight, concurrency=workers, on_progress=lambda p: None)
    gc.collect()  # this run's clock does not pay for an earlier run's garbage
    t0 = time.perf_counter()
    status = steer.run_stage(stage, ctx)
    dt = time.perf_counter() - t0
    assert status == "done" and stage.told == stage.n
    _check_db(ledger, cid, stage.n)
    return dt


def run_steered(n: int, workers: int, run_dir: Path, in_flight: int, sleep_s: float = 0.0) -> float:
    """The steering loop over the Parsl dispatcher into SQLite: seconds for ``n`` no-op tasks."""
    ledger, cid, sid = _open(run_dir)
    d = _dispatcher(run_dir, workers)
    try:
        return _steer(ledger, cid, sid, d, in_flight, workers, NoopStage(n, run_dir, sleep_s), run_dir)
    finally:
        d.shutdown()


def site_in_flight(workers: int) -> int:
    """Tasks in flight ``campaign run`` keeps on the local site with ``workers`` workers."""
    return parse_recipe(f"campaign: bench\nsite:\n  name: local\n  workers: {workers}\n").site.max_in_flight()


class InstantDispatcher(Dispatcher):
    """Answers every attempt at once from one thread (the app's in-process path, no workers): what is left of
    the campaign path is the steering loop and its database."""

    name = "instant"

    def __init__(self) -> None:
        super().__init__()
        self._pool = ThreadPoolExecutor(1)

    def _launch(self, spec: TaskSpec) -> Future[Any]:
        return self._pool.submit(run_task, spec.model_dump(mode="json"), None, in_process=True)

    def shutdown(self, wait: bool = True) -> None:
        self._closed = True
        self._pool.shutdown(wait=wait)


def steering_cpu_per_task(n: int, run_dir: Path, in_flight: int) -> float:
    """Microseconds of the steering thread's CPU per task for ``n`` no-op tasks (instant dispatcher)."""
    ledger, cid, sid = _open(run_dir)
    d = InstantDispatcher()
    ctx = StageContext(recipe=parse_recipe("campaign: bench\n"), ledger=ledger, campaign_id=cid, stage_id=sid,
                       workdir=run_dir, site="local")
    steer = Steerer(TaskQueue(ledger, cid, site="local", executor=d.name, policy=RetryPolicy(0, 0)), d,
                    max_in_flight=in_flight)
    stage = NoopStage(n, run_dir)
    gc.collect()
    t0 = time.thread_time()
    try:
        assert steer.run_stage(stage, ctx) == "done"
    finally:
        d.shutdown()
    assert stage.told == n, f"{stage.told} of {n} tasks ran: the database was not fresh"
    return (time.thread_time() - t0) / n * 1e6


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
    parser.add_argument("--sleep-tasks", type=int, default=200, help="tasks of the 50 ms variant")
    parser.add_argument("--scaling", default="1000,20000", help="task counts of the steering-CPU figure ('' skips)")
    parser.add_argument("--quick", action="store_true", help="200 tasks, 2 repetitions, scaling 500,2000")
    parser.add_argument("--only", default="", help="comma-separated variants to run (default: all)")
    args = parser.parse_args()
    n, reps = (200, 2) if args.quick else (args.tasks, args.reps)
    scaling = [int(x) for x in ("500,2000" if args.quick else args.scaling).split(",") if x]
    in_flight = args.in_flight or n
    m = args.sleep_tasks
    runs = {
        "peer": lambda d: run_peer(n, args.workers, d),
        "ours": lambda d: run_steered(n, args.workers, d, in_flight),
        "ours_run_default": lambda d: run_steered(n, args.workers, d, site_in_flight(args.workers)),
        "peer_50ms": lambda d: run_peer(m, args.workers, d, sleep_s=0.05),
        "ours_50ms": lambda d: run_steered(m, args.workers, d, site_in_flight(args.workers), sleep_s=0.05),
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
            print(f"rep {rep} {which:>20}: {dt:.3f} s", flush=True)
    cpu: dict[int, float] = {}
    if scaling:  # warm up (imports, statement compilation): the figure is the steady state, not a first run
        with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
            steering_cpu_per_task(200, Path(tmp), site_in_flight(args.workers))
    for k in scaling:
        runs_k = []
        for _ in range(3 if k <= 2000 else 1):  # each in a fresh database: a reused one has its tasks done already
            with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
                runs_k.append(steering_cpu_per_task(k, Path(tmp), site_in_flight(args.workers)))
        cpu[k] = statistics.median(runs_k)
        print(f"steering CPU per task at {k} tasks: {cpu[k]:.0f} us", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    # the ratio of one repetition's two runs (a few seconds apart) is not moved by the machine getting slower or
    # faster between repetitions
    pairs = [p / o for p, o in zip(times["peer"], times["ours"], strict=True)]
    out: dict[str, Any] = {
        "benchmark": "dispatch_noop_wall",
        "ours": round(med["ours"], 4),
        "peer": round(med["peer"], 4),
        "unit": "s",
        "ratio": round(statistics.median(pairs), 3),
        "ratio_range": [round(min(pairs), 3), round(max(pairs), 3)],
        "ratio_of_medians": round(med["peer"] / med["ours"], 3),
        **{k: round(v, 4) for k, v in med.items() if k not in ("ours", "peer")},
    }
    if "ours_run_default" in med:
        out["ratio_run_default"] = round(med["peer"] / med["ours_run_default"], 3)
    if "ours_50ms" in med and "peer_50ms" in med:
        busy = {k: m * 0.05 / args.workers / med[k] for k in ("ours_50ms", "peer_50ms")}
        out.update(busy_ours_50ms=round(busy["ours_50ms"], 3), busy_peer_50ms=round(busy["peer_50ms"], 3),
                   ratio_busy_50ms=round(busy["ours_50ms"] / busy["peer_50ms"], 3))
    if cpu:
        out.update({f"steering_cpu_us_per_task_{k}": round(v, 1) for k, v in cpu.items()})
        lo, hi = min(cpu), max(cpu)
        out["scaling_growth"] = round(cpu[hi] / cpu[lo], 3)
    out.update(includes_db_recording=True, db="sqlite", tasks=n, in_flight=in_flight, reps=reps,
               workers=args.workers, peer_name="bare Parsl HTEX python_app, same site config (parsl.log at INFO)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
