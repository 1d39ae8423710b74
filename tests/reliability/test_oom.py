"""An attempt that runs out of memory is recorded as ``oom``: an app whose allocation fails under an address-space
cap (MemoryError, reported by the app contract), and an app the kernel's OOM killer kills in a memory cgroup
with a limit (SIGKILL while the cgroup's OOM-kill counter rose); other deaths by signal stay ``killed``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from campaign.oom import memory_cgroup_dir, oom_kills
from campaign.tasks import ExitCause, TaskSpec
from campaign.worker import run_task

REPO = Path(__file__).resolve().parents[2]


def _spec(tmp_path: Path, **config: object) -> TaskSpec:
    return TaskSpec(task_id=uuid.uuid4().hex, kind="noop", app="campaign.apps.noop", config=dict(config),
                    workdir=str(tmp_path / "task"))


def test_an_allocation_beyond_an_address_space_cap_is_oom(tmp_path: Path) -> None:
    capped = run_task(_spec(tmp_path, allocate_mb=3000).model_dump_json(), ["prlimit", "--as=1500000000"],
                      in_process=False)
    assert capped["exit_cause"] == ExitCause.OOM.value, capped
    assert capped["result"]["reason"] == "oom" and "MemoryError" in capped["result"]["message"]
    fits = run_task(_spec(tmp_path, allocate_mb=50).model_dump_json(), ["prlimit", "--as=1500000000"],
                    in_process=False)
    assert fits["exit_cause"] == ExitCause.OK.value and fits["result"]["allocated_mb"] == 50


def test_a_kill_by_signal_without_an_oom_kill_stays_killed(tmp_path: Path) -> None:
    res = run_task(_spec(tmp_path, fail="signal").model_dump_json(), in_process=False)
    assert res["exit_cause"] == ExitCause.KILLED.value


def _child_memory_cgroup(limit_bytes: int) -> Path | None:
    """A new memory cgroup (v1 or v2) under this process's own, limited to ``limit_bytes``; None if not allowed."""
    parent = memory_cgroup_dir()
    if parent is None or oom_kills(parent) is None:
        return None
    child = parent / f"campaign-oom-test-{uuid.uuid4().hex[:8]}"
    try:
        child.mkdir()
        limit = child / ("memory.max" if (child / "memory.max").exists() else "memory.limit_in_bytes")
        limit.write_text(str(limit_bytes))
        if (child / "memory.swap.max").exists():  # v2: no swap, so the limit is a hard one
            (child / "memory.swap.max").write_text("0")
    except OSError:
        if child.exists():
            child.rmdir()
        return None
    return child


def test_the_kernel_oom_killer_in_a_memory_cgroup_is_oom(tmp_path: Path) -> None:
    cgroup = _child_memory_cgroup(150 << 20)
    if cgroup is None:
        pytest.skip("cannot create a memory cgroup with a limit here")
    try:
        spec = _spec(tmp_path, allocate_mb=600)
        script = (f"import json, os\nopen({str(cgroup / 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n"
                  "from campaign.worker import run_task\n"
                  f"print(json.dumps(run_task({spec.model_dump_json()!r}, in_process=False)))\n")
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.returncode == 0, proc.stderr[-2000:]
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        assert res["exit_cause"] == ExitCause.OOM.value, res
        assert res["returncode"] == -9 and "OOM killer" in res["error"]
        assert oom_kills(cgroup) >= 1
    finally:
        cgroup.rmdir()
