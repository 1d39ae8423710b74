"""A worker killed mid-task (SIGKILL from outside): the task is retried and both attempts are recorded, each
with its cause. Two ways to lose it: the app's process killed (cause ``killed``, charged) and the worker-pool
process running the task killed (cause ``node_lost``, free)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from campaign.dispatch import make_dispatcher
from campaign.ledger import Ledger
from campaign.recipe import parse_recipe
from campaign.stages.base import PlannedTask, StageContext
from campaign.steer import Steerer
from campaign.taskqueue import TaskQueue
from campaign.tasks import TaskResult, TaskSpec, TaskState
from db import models as m


class OneTask:
    """A stage of one sleeping no-op task."""

    name = kind = "noop"

    def __init__(self, workdir: Path, **config: Any) -> None:
        self.workdir, self.config = workdir, config

        self.spec = TaskSpec(kind="noop", app="campaign.apps.noop", config=config, workdir=str(workdir / "sleeper"))

    def start(self, ctx: StageContext) -> list[PlannedTask]:
        return [PlannedTask("sleeper", self.spec)]

    def on_done(self, ctx: StageContext, task: Any, result: TaskResult) -> list[PlannedTask]:
        return []

    def on_failed(self, ctx: StageContext, task: Any, result: TaskResult | None) -> list[PlannedTask]:
        return []

    def finish(self, ctx: StageContext) -> str:
        return "done"


def _procs() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _kill_once(find: Any, killed: list[int], stop: threading.Event) -> None:
    while not stop.is_set() and not killed:
        for pid in find():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        time.sleep(0.05)


def _run(engine: Any, tmp_path: Path, stage: OneTask, in_process: bool, find: Any) -> list[tuple[int, str, Any]]:
    ledger = Ledger(engine)
    cid = ledger.open_campaign(name="wk", recipe_text="campaign: wk", recipe_hash="h", site="local").id
    sid = ledger.stage(cid, "noop", "noop").id
    ctx = StageContext(recipe=parse_recipe("campaign: wk\n"), ledger=ledger, campaign_id=cid, stage_id=sid,
                       workdir=tmp_path, site="local")
    dispatcher = make_dispatcher("local", {"max_workers": 1, "retries": 1, "in_process": in_process},
                                 tmp_path / "dispatch")
    killed: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_kill_once, args=(find, killed, stop), daemon=True)
    watcher.start()
    try:
        steer = Steerer(TaskQueue(ledger, cid, site="local", executor=dispatcher.name), dispatcher, max_in_flight=1)
        assert steer.run_stage(stage, ctx) == "done"
    finally:
        stop.set()
        dispatcher.shutdown()
    assert killed, "the watcher never found the worker to kill"
    with ledger.Session() as s:
        task = s.scalar(select(m.Task))
        assert task is not None and task.state == TaskState.DONE
        return [(a.number, a.exit_cause.value, a.error) for a in task.attempts]


def test_app_process_killed_mid_task(engine: Any, tmp_path: Path) -> None:
    stage = OneTask(tmp_path, sleep_s=2.0, payload="x")

    mark = f"CAMPAIGN_TASK_ID={stage.spec.task_id}\0".encode()

    def find() -> list[int]:  # the app process: this task's id is in its environment (set by the worker)
        return [p for p in _procs() if mark in _environ(p) + b"\0" and p != os.getpid()]

    attempts = _run(engine, tmp_path, stage, False, find)
    assert [(n, c) for n, c, _ in attempts] == [(1, "killed"), (2, "ok")]
    assert attempts[0][2]  # the cause comes with an explanation


def test_worker_process_killed_mid_task(engine: Any, tmp_path: Path) -> None:
    stage = OneTask(tmp_path, sleep_s=2.0, fail_attempts=0)  # fail_attempts: the app marks its start on disk
    started = tmp_path / "sleeper" / "noop_runs.txt"

    def find() -> list[int]:  # the pool's worker processes: grandchildren of this process (via the forkserver)
        if not started.exists():
            return []
        mine = os.getpid()
        children = {p for p in _procs() if _ppid(p) == mine}
        return [p for p in _procs() if _ppid(p) in children]

    attempts = _run(engine, tmp_path, stage, True, find)
    assert [(n, c) for n, c, _ in attempts] == [(1, "node_lost"), (2, "ok")]
    assert "BrokenProcessPool" in (attempts[0][2] or "")
