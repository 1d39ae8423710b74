"""A no-op / sleep app, with failure modes for testing retries.

Config keys (all optional):
    sleep_s (float): seconds to sleep (default 0).
    fail (str): ``error`` (RunFailed, exit 1), ``bad_input`` (exit 2), ``crash`` (``os._exit(3)``: in-process
        this loses the worker, as a dead node would), ``signal`` (SIGKILL itself).
    fail_attempts (int): fail only the first N runs in this workdir (counted in ``noop_runs.txt``).
    allocate_mb (int): allocate and touch this many MiB of host memory before returning (memory caps).
    burn_s (float): keep one core busy for this many seconds (CPU accounting).
    payload (any JSON): echoed back in the result.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from models.appio import BadInput, RunFailed, main_for

#: The worker may call :func:`run_in_process` instead of starting a Python process.
IN_PROCESS = True

_FAIL_MODES = ("error", "bad_input", "crash", "signal")


def _count_run(workdir: Path) -> int:
    """Increment and return the number of runs recorded in ``workdir`` (1 for the first)."""
    workdir.mkdir(parents=True, exist_ok=True)
    counter = workdir / "noop_runs.txt"
    n = int(counter.read_text()) + 1 if counter.exists() else 1
    tmp = counter.with_suffix(".tmp")
    tmp.write_text(str(n))
    os.replace(tmp, counter)
    return n


def run(config: dict[str, Any], config_path: Path) -> dict[str, Any]:
    """Sleep, optionally fail, and return what was asked.

    Args:
        config: See the module docstring.
        config_path: The config file (its directory is the task's workdir).

    Returns:
        ``{"slept_s", "host", "pid", "run", "payload"}``.
    """
    sleep_s = config.get("sleep_s", 0)
    if not isinstance(sleep_s, int | float) or sleep_s < 0:
        raise BadInput(f"{config_path}: field 'sleep_s' must be a number >= 0, got {sleep_s!r}")
    fail = config.get("fail")
    if fail is not None and fail not in _FAIL_MODES:
        raise BadInput(f"{config_path}: field 'fail' must be one of {', '.join(_FAIL_MODES)}, got {fail!r}")
    run_no = _count_run(config_path.parent) if "fail_attempts" in config else 1
    allocate_mb = config.get("allocate_mb", 0)
    if not isinstance(allocate_mb, int) or allocate_mb < 0:
        raise BadInput(f"{config_path}: field 'allocate_mb' must be an integer >= 0, got {allocate_mb!r}")
    held = bytearray(allocate_mb << 20)  # zero-filled: every page is touched
    burn_s = config.get("burn_s", 0)
    if not isinstance(burn_s, int | float) or burn_s < 0:
        raise BadInput(f"{config_path}: field 'burn_s' must be a number >= 0, got {burn_s!r}")
    end = time.process_time() + float(burn_s)
    while time.process_time() < end:
        pass
    if sleep_s:
        time.sleep(float(sleep_s))
    if fail and run_no <= int(config.get("fail_attempts", 1 << 30)):
        if fail == "error":
            raise RunFailed(f"noop asked to fail (run {run_no})", reason="asked")
        if fail == "bad_input":
            raise BadInput(f"{config_path}: noop asked for bad input (run {run_no})")
        if fail == "crash":
            os._exit(3)
        if fail == "signal":
            os.kill(os.getpid(), signal.SIGKILL)
    return {
        "slept_s": float(sleep_s),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "run": run_no,
        "payload": config.get("payload"),
        "allocated_mb": len(held) >> 20,
    }


run_in_process = run

if __name__ == "__main__":
    main_for(run, "campaign no-op / sleep app")
