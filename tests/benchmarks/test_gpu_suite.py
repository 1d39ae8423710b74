"""The GPU suite runs end to end with ``--device cpu --small``, so that a lent GPU machine runs it once without
surprises: every step leaves its line in ``results.jsonl`` and the last line is the benchmark protocol's JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_suite_runs_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--device", "cpu", "--small",
                           "--out", str(out), "--budget-s", "500"], capture_output=True, text=True, timeout=560,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"benchmark", "ours", "peer", "unit", "ratio"} <= set(last) and last["benchmark"] == "gpu_suite"
    records = {r["step"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert set(records) == {"environment", "gpu_tests", "screen", "train", "profile"}
    assert records["environment"]["device"] == "cpu" and records["environment"]["torch"]
    tests = records["gpu_tests"]
    assert tests["exit"] == 0 and tests.get("skipped", 0) >= 1 and tests.get("failed", 0) == 0
    screen = records["screen"]["result"]
    assert records["screen"]["exit"] == 0 and set(screen["workloads"]) == {"screen_fp32", "screen_bf16",
                                                                           "screen_fp64"}
    assert screen["seed_structures_per_s_per_gcd"] == 300.0 and set(screen["vs_seed"]) == set(screen["workloads"])
    train = records["train"]["result"]
    assert records["train"]["exit"] == 0 and set(train["precisions"]) == {"fp32", "bf16", "fp64"}
    for fig in train["precisions"].values():  # the peer (schnetpack) is in the `bench` extra: measured when there
        assert fig["ours"] > 0 and fig["ours_peak_mb"] is None  # no device memory on a CPU
        assert (fig["peer"] > 0) if train["peer_error"] is None else (fig["peer"] is None and "bench" in
                                                                       train["peer_error"])
    profile = records["profile"]["result"]
    assert records["profile"]["exit"] == 0 and profile["ours"] > 0
    assert profile["variants"]["ours_fp32"]["aten_ops"] > 0 and profile["variants"]["screen_fp32"]["structures"] > 0
    assert (profile["ratio"] > 0) if profile["peer_error"] is None else "bench" in profile["peer_error"]
    assert last["ours"] == screen["ours"] and last["ratio"] == screen["ratio"]
