"""Fencing, end to end through ``campaign run`` / ``campaign resume``: whatever is killed, a task never runs as
two processes at once, a killed driver leaves no process behind, and a second driver is refused.

The evidence is taken from the machine, not from the database: a sampler reads every process's command line
(``/proc``) every 20 ms and notes which app processes run which task (their ``--config`` path).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from campaign.processes import process_alive, process_start_ticks
from db.readonly import run_readonly
from tests.reliability.conftest import TINY_RECIPE, TINY_TASKS
from tests.reliability.driver_kill import CAMPAIGN_EXE, attempt_count, check_invariants


class AppSampler:
    """Samples the app processes (``python -m models.…  --config <workdir>/config.json``) under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.seen: dict[int, str] = {}  # pid -> the task's config path
        self.overlaps: list[tuple[str, list[int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> AppSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            by_task: dict[str, list[int]] = defaultdict(list)
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                args = [a.decode(errors="replace") for a in argv]
                if "-m" in args and "--config" in args:
                    config = args[args.index("--config") + 1]
                    if config.startswith(self.root):
                        by_task[config].append(int(entry))
                        self.seen[int(entry)] = config
            for config, pids in by_task.items():
                if len(pids) > 1:
                    self.overlaps.append((config, pids))
            time.sleep(0.02)


def _descendants(pid: int) -> dict[int, int | None]:
    """``{pid: start ticks}`` of every process below ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry))
    out: dict[int, int | None] = {}
    todo = list(children[pid])
    while todo:
        p = todo.pop()
        out[p] = process_start_ticks(p)
        todo.extend(children[p])
    return out


def _campaign(args: list[str], cwd: Path, url: str) -> subprocess.Popen[bytes]:
    log = (cwd / f"{args[0]}-{time.monotonic_ns()}.log").open("wb")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAMPAIGN_DB": ""}
    return subprocess.Popen([CAMPAIGN_EXE, *args, "--db", url, "--quiet"], cwd=cwd, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(cond, timeout_s: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_with_tasks_queued_behind_busy_workers_then_resume(tmp_path: Path) -> None:
    """Two workers busy, five tasks queued behind them: SIGKILL the driver alone (its pool is not reaped) and
    resume at once. No task may run twice at once, and nothing of the first run may be alive at the end."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.format(name="tiny"))
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with AppSampler(tmp_path) as sampler:
        first = _campaign(["run", str(recipe)], tmp_path, url)
        _wait_for(lambda: attempt_count(url, "tiny") >= 3 and len(sampler.seen) >= 2)
        left = _descendants(first.pid)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        resumed = _campaign(["resume", "tiny"], tmp_path, url)
        assert resumed.wait(timeout=400) == 0
        time.sleep(0.5)
    assert sampler.overlaps == [], sampler.overlaps
    alive = [pid for pid, ticks in left.items() if process_alive(pid, ticks)]
    assert alive == [], f"processes of the killed run still alive: {alive}"
    assert check_invariants(url, "tiny") == []
    assert run_readonly("SELECT COUNT(*) FROM tasks WHERE state = 'DONE'", url=url).rows == [(TINY_TASKS,)]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_second_driver_is_refused_and_the_first_one_is_untouched(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.format(name="tiny"))
    url = f"sqlite:///{tmp_path / 'c.db'}"
    first = _campaign(["run", str(recipe)], tmp_path, url)
    try:
        _wait_for(lambda: attempt_count(url, "tiny") >= 1)
        query = "SELECT status, started_at, ended_at, driver_token, driver_pid FROM campaigns"
        before = run_readonly(query, url=url).rows
        stages = run_readonly("SELECT id, config FROM stages ORDER BY id", url=url).rows
        for args in (["run", str(recipe)], ["resume", "tiny"]):
            second = subprocess.run([CAMPAIGN_EXE, *args, "--db", url, "--quiet"], cwd=tmp_path,
                                    capture_output=True, text=True, timeout=120,
                                    env={**os.environ, "CAMPAIGN_DB": ""})
            assert second.returncode == 2, second.stderr
            assert f"pid {first.pid} on " in second.stderr and "another driver" in second.stderr
        after = run_readonly(query, url=url).rows
        # the refused drivers changed nothing; the first one may have finished meanwhile, by itself
        assert after == before or (first.poll() is not None and after[0][0] == "done" and after[0][4] == first.pid)
        assert before[0][0] == "running" and before[0][4] == first.pid
        assert run_readonly("SELECT id, config FROM stages ORDER BY id", url=url).rows[:len(stages)] == stages
        assert first.wait(timeout=400) == 0
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert run_readonly("SELECT status, driver_token FROM campaigns", url=url).rows == [("done", None)]
    assert check_invariants(url, "tiny") == []


@pytest.mark.slow
def test_stage_failure_reason_is_shown_by_run_and_status(tmp_path: Path) -> None:
    """A dataset file that validates but cannot be preprocessed (NaN energies): ``campaign run`` exits 1 and
    prints why the stage failed, and ``campaign status`` (table and JSON) says the same."""
    import json

    from tests.reliability import datafiles as df

    bad = df.extxyz_nan_energy(tmp_path)
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"campaign: bad\nsite: {{name: local, workers: 1}}\nworkdir: runs\n"
                      f"datasets:\n  - {{name: demo-emt, files: [{bad}]}}\nstages:\n  preprocess: {{cutoff: 4.5}}\n")
    url = f"sqlite:///{tmp_path / 'c.db'}"
    env = {**os.environ, "CAMPAIGN_DB": "", "COLUMNS": "300"}
    run = subprocess.run([CAMPAIGN_EXE, "run", str(recipe), "--db", url, "--quiet"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "task(s) failed" in run.stdout and "nonfinite" in run.stdout, run.stdout
    status = subprocess.run([CAMPAIGN_EXE, "status", "bad", "--db", url], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert "stage preprocess failed:" in status.stdout and "nonfinite" in status.stdout, status.stdout
    snap = json.loads(subprocess.run([CAMPAIGN_EXE, "status", "bad", "--db", url, "--format", "json"], cwd=tmp_path,
                                     env=env, capture_output=True, text=True, timeout=120).stdout)
    (stage,) = snap["stages"]
    assert stage["status"] == "failed" and "nonfinite" in stage["failure"]
