"""Each attempt's CPU time, from the app process's exit status (``wait4``), reaches the ``attempts`` row: an
app that keeps a core busy uses about the seconds it burnt, one that sleeps next to none; an in-process app
reports its thread's CPU."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select

from campaign.dispatch.failures import RetryPolicy
from campaign.ledger import Ledger
from campaign.tasks import TaskResult, TaskSpec
from campaign.worker import run_task
from db import models as m


def _spec(tmp_path: Path, name: str, **config: object) -> TaskSpec:
    return TaskSpec(task_id=uuid.uuid4().hex, kind="noop", app="campaign.apps.noop", config=dict(config),
                    workdir=str(tmp_path / name))


def test_cpu_seconds_per_attempt(engine: Any, tmp_path: Path) -> None:
    busy = run_task(_spec(tmp_path, "busy", burn_s=1.5).model_dump_json(), in_process=False)
    idle = run_task(_spec(tmp_path, "idle", sleep_s=1.5).model_dump_json(), in_process=False)
    assert busy["exit_cause"] == idle["exit_cause"] == "ok"
    # the same interpreter start-up in both: the difference is the 1.5 s burnt
    assert 1.3 <= busy["cpu_seconds"] - idle["cpu_seconds"] <= 2.5, (busy["cpu_seconds"], idle["cpu_seconds"])
    inproc = run_task(_spec(tmp_path, "inproc", burn_s=0.5).model_dump_json(), in_process=True)
    assert 0.4 <= inproc["cpu_seconds"] <= 1.5

    ledger = Ledger(engine)
    cid = ledger.open_campaign(name="usage", recipe_text="x", recipe_hash="h", site="local").id
    stage = ledger.stage(cid, "noop", "noop")
    task = ledger.create_task(cid, stage.id, "busy", _spec(tmp_path, "busy"))
    n = ledger.begin_attempt(task.id, site="local", executor="local")
    ledger.record_attempt(TaskResult(**{**busy, "task_id": task.id, "attempt": n}), policy=RetryPolicy(0, 0))
    with ledger.Session() as s:
        row = s.scalar(select(m.Attempt).where(m.Attempt.task_id == task.id))
    assert row.cpu_seconds == busy["cpu_seconds"]
