"""Adopting attempts a killed driver left in flight.

A worker records each attempt on the shared filesystem (see :mod:`campaign.worker`): ``attempt<N>.proc.json``
(host and process of the app; its mtime is a heartbeat refreshed every few seconds while the app runs) and,
before it returns, ``attempt<N>.result.json`` (the :class:`~campaign.tasks.TaskResult`). A restarted driver
probes each attempt the database shows in flight:

- **finished**: its result file is there (or, on this host, the app has exited and left its own result) — the
  result is recorded as if it had just come back;
- **alive**: on this host its app or worker process is still running (pid and start time match), elsewhere its
  heartbeat is fresh — the driver watches it instead of starting it again;
- **lost**: nothing runs it any more — the attempt is closed as ``node_lost`` and the task re-submitted.

Either way a task never runs twice at once, and nothing that finished is run again.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from campaign.attempt_files import attempt_result_file, process_file
from campaign.processes import process_alive
from campaign.tasks import ExitCause, TaskResult, TaskSpec, utcnow
from campaign.worker import settle

#: A heartbeat older than this (seconds) means the attempt's worker is gone.
STALE_AFTER_S = 30.0


@dataclass(frozen=True)
class Probe:
    """What became of an attempt the database shows in flight."""

    state: Literal["finished", "alive", "lost"]
    result: dict[str, Any] | None = None
    detail: str = ""


def probe_attempt(spec: TaskSpec, attempt: int, *, stale_after_s: float = STALE_AFTER_S) -> Probe:
    """Find out whether attempt ``attempt`` of ``spec`` finished, is still running, or was lost."""
    workdir = Path(spec.workdir)
    done = attempt_result_file(workdir, attempt)
    if done.exists():
        try:
            return Probe("finished", json.loads(done.read_text()), "its worker recorded the result")
        except (OSError, json.JSONDecodeError):
            pass  # being replaced: fall through to the process checks
    proc = process_file(workdir, attempt)
    try:
        info = json.loads(proc.read_text())
        age = time.time() - proc.stat().st_mtime
    except (OSError, json.JSONDecodeError):
        return Probe("lost", None, "no record that the attempt started")
    if info.get("host") == socket.gethostname():
        app_alive = process_alive(info.get("pid"), info.get("start_ticks"))
        worker_alive = process_alive(info.get("worker_pid"), None) and age < stale_after_s
        if app_alive or worker_alive:
            return Probe("alive", None, f"pid {info.get('pid')} on this host")
        if (workdir / "result.json").exists():  # the app finished after its worker died
            att = spec.model_copy(update={"attempt": attempt})
            res = settle(att, None, ExitCause.OK, info.get("started_at"), utcnow(),
                         workdir / f"attempt{attempt}.out", workdir / f"attempt{attempt}.err")
            return Probe("finished", res, "the app left its result after its worker died")
        return Probe("lost", None, "its processes are gone and left no result")
    if age < stale_after_s:
        return Probe("alive", None, f"heartbeat {age:.0f} s ago from {info.get('host')}")
    return Probe("lost", None, f"no heartbeat from {info.get('host')} for {age:.0f} s")


def lost_result(spec: TaskSpec, attempt: int, detail: str) -> TaskResult:
    """The ``node_lost`` result that closes an attempt nobody runs any more."""
    now = utcnow()
    return TaskResult(task_id=spec.task_id, attempt=attempt, exit_cause=ExitCause.NODE_LOST,
                      error=f"adopted after a driver restart, then lost: {detail}", started_at=now, ended_at=now)


def watch(spec: TaskSpec, attempt: int, *, poll_s: float = 1.0,
          stale_after_s: float = STALE_AFTER_S) -> Future[TaskResult]:
    """A future that resolves to the attempt's result once it finishes (or to ``node_lost`` if it vanishes)."""
    fut: Future[TaskResult] = Future()
    fut.set_running_or_notify_cancel()

    def _loop() -> None:
        while True:
            p = probe_attempt(spec, attempt, stale_after_s=stale_after_s)
            if p.state == "finished" and p.result is not None:
                fut.set_result(TaskResult.model_validate(p.result))
                return
            if p.state == "lost":
                fut.set_result(lost_result(spec, attempt, p.detail))
                return
            time.sleep(poll_s)

    threading.Thread(target=_loop, name=f"adopt-{spec.task_id[:8]}", daemon=True).start()
    return fut
