"""The GPU measurements in one run, for the few minutes a GPU machine is lent: the GPU-marked tests, then
screening throughput (fused multi-head predictor vs the per-head loop, fp32/bf16/fp64, against the seed work's
≈300 structures/s per GCD) and training throughput (PaiNN 128 x 4, ours vs schnetpack, each precision, with
peak device memory), then where a training step's time goes (``profile_device_step.py``: kernels, host
syncs and operators per step, ours and schnetpack's). Every step's result is appended to ``OUT/results.jsonl`` as it finishes, so a run cut
short still leaves what it measured.

Usage::

    python benchmarks/gpu_suite.py --device cuda --out gpu-results        # on the GPU machine (< 8 min)
    python benchmarks/gpu_suite.py --device cpu --small --out /tmp/suite   # the same path on a laptop

``--small`` shrinks every size so that the whole path runs on two CPU cores in about a minute (the tests run it
that way). Each step has its share of ``--budget-s`` (default 450 s) as a timeout. Last line: one JSON object,
the screening headline (fp32, ours vs the per-head loop) with every step's status.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def _append(out: Path, record: dict[str, Any]) -> None:
    with (out / "results.jsonl").open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def _environment(device: str) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"step": "environment", "python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None),
                           "device": device, "cuda_available": torch.cuda.is_available()}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(0)
        env["device_count"] = torch.cuda.device_count()
        env["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return env


def _run(cmd: list[str], timeout_s: float, log: Path) -> tuple[int | None, str, float]:
    """Run ``cmd`` (its output to ``log``); (exit status or None on timeout, stdout, seconds)."""
    t0 = time.perf_counter()
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, timeout_s), cwd=ROOT, env=env)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        log.write_text(out)
        return None, out, time.perf_counter() - t0
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    return proc.returncode, proc.stdout, time.perf_counter() - t0


def gpu_test_files() -> list[str]:
    """The test files that mark tests ``gpu`` (paths relative to the repository root)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if "mark.gpu" in p.read_text())


def _last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return dict(json.loads(line))
            except ValueError:
                return None
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--small", action="store_true", help="tiny sizes: check the path (CPU)")
    ap.add_argument("--budget-s", type=float, default=450.0)
    ap.add_argument("--precisions", default="fp32,bf16,fp64")
    ap.add_argument("--steps", default="tests,train,screen,profile",
                    help="which of tests,train,screen,profile to run")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.jsonl").unlink(missing_ok=True)
    start = time.perf_counter()

    def left(share: float) -> float:
        return min(share * args.budget_s, args.budget_s - (time.perf_counter() - start))

    env = _environment(args.device)
    _append(args.out, env)
    py = sys.executable
    steps: dict[str, Any] = {}

    # 1. the GPU-marked tests (they skip, with the reason, where the device has no CUDA). Only the files that
    # hold such tests are collected: a GPU machine's image lacks the steering stack (Parsl, SQLAlchemy…) that
    # other test modules import.
    wanted = set(args.steps.split(","))
    if "tests" in wanted:
        code, stdout, secs = _run([py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                                   *gpu_test_files()], left(0.25), args.out / "gpu_tests.log")
        summary = next((ln for ln in reversed(stdout.splitlines()) if re.search(r"\d+ (passed|skipped|failed|"
                                                                             r"deselected)", ln)), "")
        counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|skipped|failed|error|deselected)", summary)}
        steps["gpu_tests"] = {"step": "gpu_tests", "exit": code, "seconds": round(secs, 1), **counts}
        _append(args.out, steps["gpu_tests"])

    # 2. training throughput (the shorter), 3. screening throughput
    size = ["--small"] if args.small else (["--structures", "512", "--batch-atoms", "32768", "--repeats", "2"]
                                          if args.device.startswith("cuda") else ["--quick"])
    benches = {
        "train": [py, str(BENCH / "bench_train_device.py"), "--device", args.device, "--precisions",
                  args.precisions, *(["--small"] if args.small else [])],
        "screen": [py, str(BENCH / "bench_screen.py"), "--device", args.device, "--precisions", args.precisions,
                   "--no-all-forces", *size],
        "profile": [py, str(BENCH / "profile_device_step.py"), "--device", args.device,
                    *(["--small"] if args.small else [])],
    }
    for name, cmd in ((n, c) for n, c in benches.items() if n in wanted):
        share = {"train": 0.3, "screen": 0.5, "profile": 1.0}[name]
        code, stdout, secs = _run(cmd, left(share), args.out / f"{name}.log")
        record = {"step": name, "exit": code, "seconds": round(secs, 1), "result": _last_json(stdout)}
        steps[name] = record
        _append(args.out, record)

    screen = (steps.get("screen", {}).get("result") or {})
    print(json.dumps({
        "benchmark": "gpu_suite", "ours": screen.get("ours"), "peer": screen.get("peer"),
        "unit": "structures/s (screening, fp32, fused vs per-head loop)", "ratio": screen.get("ratio"),
        "device": env.get("device_name", args.device), "seconds": round(time.perf_counter() - start, 1),
        "steps": {k: {"exit": v.get("exit"), "seconds": v.get("seconds")} for k, v in steps.items()},
        "results": str(args.out / "results.jsonl"),
    }))


if __name__ == "__main__":
    main()
