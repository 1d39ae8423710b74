"""Outputs interrupted mid-write never replace a good one: a checkpoint (SIGKILL during ``torch.save``), a JSON
result/report (an exception during serialisation), a preprocess run's stores (SIGKILL mid-run) and the
directory swap under them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models.appio import replace_dir, write_json_atomic
from tests.reliability.world import tree

SAVER = """
import sys, torch
from models import checkpoint
checkpoint.save({"model_state": {"w": torch.full((4,), 1.0)}, "epoch": 1}, sys.argv[1])
print("good", flush=True)
sys.stdin.readline()
checkpoint.save({"model_state": {"w": torch.randn(16_000_000)}, "epoch": 2}, sys.argv[1])  # ~64 MB
print("second", flush=True)
"""


def test_checkpoint_killed_mid_write_keeps_the_good_one(tmp_path: Path) -> None:
    from models import checkpoint

    path = tmp_path / "ckpt" / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "good"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while not any(p.name.endswith(".tmp") and p.stat().st_size > 0 for p in path.parent.iterdir()):
            assert time.monotonic() < deadline and proc.poll() is None, "the second save never started"
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)  # mid-write
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    payload = checkpoint.load(path)  # verifies the sha256 sidecar
    assert payload["epoch"] == 1 and payload["model_state"]["w"].tolist() == [1.0] * 4


class _Exploding:
    def __str__(self) -> str:
        raise RuntimeError("interrupted while serialising")


def test_json_report_interrupted_keeps_the_good_one(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    write_json_atomic(path, {"status": "ok", "objective": 0.5})
    with pytest.raises(RuntimeError, match="interrupted"):
        write_json_atomic(path, {"status": "ok", "rows": list(range(10_000)), "later": _Exploding()})
    assert json.loads(path.read_text()) == {"objective": 0.5, "status": "ok"}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left behind


def test_replace_dir_swaps_without_a_gap(tmp_path: Path) -> None:
    final, new = tmp_path / "store", tmp_path / "store.new"
    final.mkdir()
    (final / "a").write_text("old")
    new.mkdir()
    (new / "a").write_text("new")
    replace_dir(new, final)
    assert (final / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


@pytest.mark.slow
def test_preprocess_killed_mid_run_keeps_earlier_outputs(tmp_path: Path) -> None:
    from tests.reliability import datafiles as df

    data = tmp_path / "data"
    data.mkdir()
    good = df.good_extxyz(data)
    out = tmp_path / "out"

    def cfg(inputs: list[Path], cutoff: float) -> Path:
        p = tmp_path / f"cfg-{cutoff}.json"
        p.write_text(json.dumps({"output_dir": str(out), "cutoff": cutoff, "max_neighbours": 12,
                                 "datasets": [{"name": "demo-emt", "inputs": [str(i) for i in inputs]}]}))
        return p

    cmd = [sys.executable, "-m", "models.preprocess", "--config"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*cmd, str(cfg([good], 4.0))], check=True, env=env, timeout=120)
    before = tree(out)
    big = df.write_extxyz(data / "big.extxyz", df.emt_frames(400, seed=3))
    proc = subprocess.Popen([*cmd, str(cfg([big], 4.5))], env=env)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".staging-") for p in out.iterdir()):  # it started writing
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    after = {k: v for k, v in tree(out).items() if not k.startswith(".staging-")}
    assert after == before
    from models.data.store import open_split

    assert len(open_split(out, "demo-emt", "train")) + len(open_split(out, "demo-emt", "val")) + \
        len(open_split(out, "demo-emt", "test")) == 4
