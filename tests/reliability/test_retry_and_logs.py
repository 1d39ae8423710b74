"""`campaign logs` and `campaign retry` the way a user meets them: a dataset file is bad, its preprocessing task
fails, the log says why, the user fixes the file, retries the stage's failed tasks and resumes the campaign."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from typer.testing import CliRunner

from campaign.cli.app import app
from db.readonly import run_readonly
from tests.reliability import datafiles as df
from tests.reliability.driver_kill import CAMPAIGN_EXE

runner = CliRunner()

RECIPE = """\
campaign: fixme
site: {name: local, workers: 1}
workdir: runs
datasets:
  - {name: mptrj, files: [data/mine.extxyz], reader: ase}
stages:
  preprocess: {cutoff: 4.5}
"""


def _campaign(args: list[str], cwd: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAMPAIGN_DB": ""}
    return subprocess.run([CAMPAIGN_EXE, *args, "--db", url, "--quiet"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_failed_task_logged_fixed_retried_and_resumed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    bad = df.extxyz_without_energies(data)
    bad.rename(data / "mine.extxyz")
    (tmp_path / "r.yaml").write_text(RECIPE)
    url = f"sqlite:///{tmp_path / 'c.db'}"

    first = _campaign(["run", "r.yaml"], tmp_path, url)
    assert first.returncode == 1, first.stdout + first.stderr
    key = "preprocess/mptrj"
    assert run_readonly("SELECT state FROM tasks WHERE key = :k", {"k": key}, url=url).rows == [("FAILED",)]

    logs = runner.invoke(app, ["logs", key, "--db", url, "--stream", "stderr"], env={"COLUMNS": "200"})
    assert logs.exit_code == 0, logs.output
    assert "ended: error (exit status 2)" in logs.output and "no energy" in logs.output
    task_id = run_readonly("SELECT id FROM tasks WHERE key = :k", {"k": key}, url=url).rows[0][0]
    by_prefix = runner.invoke(app, ["logs", task_id[:8], "--db", url, "-n", "1"], env={"COLUMNS": "200"})
    assert by_prefix.exit_code == 0 and f"{key} ({task_id[:8]}…, campaign fixme) attempt" in by_prefix.output

    refused = runner.invoke(app, ["retry", "fixme", "--stage", "hpo", "--db", url])
    assert refused.exit_code == 2 and "no stage 'hpo'" in refused.output

    df.good_extxyz(data, "mine.extxyz")  # the user fixes the file
    res = runner.invoke(app, ["retry", "fixme", "--stage", "preprocess", "--db", url])
    assert res.exit_code == 0 and "1 failed task(s) of stage 'preprocess' are ready again" in res.output
    assert run_readonly("SELECT state, charged_failures FROM tasks WHERE key = :k", {"k": key},
                        url=url).rows == [("READY", 0)]
    again = runner.invoke(app, ["retry", "fixme", "--stage", "preprocess", "--db", url])
    assert again.exit_code == 0 and "has no failed task" in again.output

    resumed = _campaign(["resume", "fixme"], tmp_path, url)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert run_readonly("SELECT status FROM campaigns", url=url).rows == [("done",)]
    attempts = run_readonly("SELECT a.number, a.exit_cause FROM attempts a JOIN tasks t ON t.id = a.task_id "
                            "WHERE t.key = :k ORDER BY a.number", {"k": key}, url=url).rows
    assert attempts[0][1] == "error" and attempts[-1][1] == "ok"  # the failure is kept, the retry is a new attempt
    latest = runner.invoke(app, ["logs", key, "--db", url], env={"COLUMNS": "200"})
    assert f"attempt {len(attempts)} of {len(attempts)}: ended: ok" in latest.output
    earlier = runner.invoke(app, ["logs", key, "--db", url, "--attempt", "1", "--stream", "stderr"],
                            env={"COLUMNS": "200"})
    assert "no energy" in earlier.output


def test_follow_prints_what_a_running_attempt_writes_until_it_ends(tmp_path: Path) -> None:
    """`campaign logs TASK --follow`: lines appear as the attempt's worker writes them (its output file in the
    task's workdir), a partial line once finished, and following stops when the attempt's end is recorded."""
    import threading
    import time

    from campaign.attempt_logs import find_attempt, follow_attempt
    from campaign.dispatch.failures import RetryPolicy
    from campaign.ledger import Ledger
    from campaign.tasks import ExitCause, TaskResult, TaskSpec, utcnow
    from db.engine import make_engine
    from db.migrate import ensure_schema

    url = f"sqlite:///{tmp_path / 'c.db'}"
    engine = make_engine(url)
    ensure_schema(engine)
    ledger = Ledger(engine)
    cid = ledger.open_campaign(name="f", recipe_text="campaign: f\n", recipe_hash="f" * 64, site="local").id
    sid = ledger.stage(cid, "train", "train").id
    work = tmp_path / "runs" / "train"
    work.mkdir(parents=True)
    task = ledger.create_task(cid, sid, "train/model-1/chunk-0", TaskSpec(kind="train", app="models.train",
                                                                          workdir=str(work)))
    n = ledger.begin_attempt(task.id, site="local")
    out = work / f"attempt{n}.out"
    out.write_text("epoch 0 loss 3.0\n")

    att = find_attempt("train/model-1/chunk-0", db=url)
    assert not att.ended and att.stdout == out

    def worker() -> None:
        for epoch in (1, 2):
            time.sleep(0.2)
            with out.open("a") as fh:
                fh.write(f"epoch {epoch} loss {3.0 / (epoch + 1):.2f}\n")
        with out.open("a") as fh:
            fh.write("done, no newline")
        time.sleep(0.2)
        ledger.record_attempt(TaskResult(task_id=task.id, attempt=n, exit_cause=ExitCause.OK, result={},
                                         started_at=utcnow(), ended_at=utcnow()), policy=RetryPolicy(0, 0))

    t = threading.Thread(target=worker)
    t.start()
    got = [line for _, line in follow_attempt(att, ["stdout"], db=url, poll_s=0.05)]
    t.join()
    engine.dispose()
    assert got == ["epoch 1 loss 1.50", "epoch 2 loss 1.00", "done, no newline"]
