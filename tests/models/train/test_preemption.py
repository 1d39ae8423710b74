"""The scheduler's warning signal: the training app checkpoints at the next step, even mid-epoch, and stops with
``stop_reason = "preempted"``; the next run (``auto_resume``) finishes that epoch and ends exactly where an
uninterrupted run ends. The Slurm path (``--signal`` before a batch job's time limit) runs in
``tests/dispatch/test_slurm_multinode.py``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from models import checkpoint
from models.contracts.train import parse_config
from models.train import run
from models.training.loop import Trainer
from models.training.metrics import read_metrics
from tests.conftest import REPO


def _train(cfg: dict[str, Any]) -> dict[str, Any]:
    return run(parse_config(cfg, "<test>"))


def _assert_same_run(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Same weights, same figures in the same epochs (fp64 on the CPU: bitwise)."""
    wa = checkpoint.load(a["checkpoints"]["last"]["path"])["model_state"]
    wb = checkpoint.load(b["checkpoints"]["last"]["path"])["model_state"]
    for name, value in wa.items():
        assert torch.equal(value, wb[name]), name
    assert a["steps"] == b["steps"] and a["objective"] == b["objective"]
    assert read_metrics(a["metrics_path"]) == read_metrics(b["metrics_path"])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_mid_epoch_checkpoints_that_step_and_the_next_run_finishes_exactly(
    train_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    straight = _train(train_config)
    steps_per_epoch = straight["steps"] // train_config["epochs"]
    assert steps_per_epoch >= 2
    at_step = steps_per_epoch + 1  # the first step of epoch 1 done: the signal lands mid-epoch
    cfg = {**train_config, "output_dir": str(tmp_path / "preempted"), "auto_resume": True}

    accumulate, seen = Trainer._accumulate, []

    def signal_at_step(self: Trainer, acc: torch.Tensor, per_head: Any) -> None:  # the scheduler, on time
        accumulate(self, acc, per_head)
        if self.model.training:  # a training step (validation accumulates too)
            seen.append(1)
        if len(seen) == at_step and self.model.training:
            signal.raise_signal(signum)

    monkeypatch.setattr(Trainer, "_accumulate", signal_at_step)
    first = _train(cfg)
    monkeypatch.undo()
    assert first["stop_reason"] == "preempted" and not first["completed"], first["stop_reason"]
    assert first["steps"] == at_step and first["last_epoch"] == 0
    last = checkpoint.load(first["checkpoints"]["last"]["path"])
    assert last["epoch"] == 0 and last["step"] == at_step
    assert last["partial_epoch"]["epoch"] == 1 and last["partial_epoch"]["steps_done"] == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or signum != signal.SIGTERM  # handlers restored

    second = _train(cfg)
    assert second["completed"] and second["resumed_from_epoch"] == 1
    assert second["checkpoints"]["last"]["path"] == first["checkpoints"]["last"]["path"]
    assert checkpoint.load(second["checkpoints"]["last"]["path"])["partial_epoch"] is None
    _assert_same_run(second, straight)


def test_sigterm_to_the_app_process_checkpoints_and_exits_cleanly(train_config: dict[str, Any],
                                                                  tmp_path: Path) -> None:
    """The real thing: ``python -m models.train`` gets SIGTERM while it trains, exits 0 with a preempted result."""
    import json

    cfg = {**train_config, "epochs": 400, "patience": 0, "output_dir": str(tmp_path / "out"), "auto_resume": True,
           "threads": 1}
    cfg_path, result = tmp_path / "config.json", tmp_path / "result.json"
    cfg_path.write_text(json.dumps(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "models.train", "--config", str(cfg_path), "--result",
                             str(result)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "out" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().strip()) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    res = json.loads(result.read_text())
    assert res["status"] == "ok" and res["stop_reason"] == "preempted" and not res["completed"]
    assert checkpoint.load(res["checkpoints"]["last"]["path"])["step"] == res["steps"]  # nothing done is lost


def test_an_attempt_stopped_at_its_walltime_checkpoints_and_is_recorded_walltime(
    train_config: dict[str, Any], tmp_path: Path
) -> None:
    """The worker's own walltime stop (SIGTERM to the app's process group): the app checkpoints the step it is at
    and the attempt is ``walltime`` (retried free), with the checkpoint to resume from."""
    from campaign.tasks import ExitCause, TaskResult, TaskSpec
    from campaign.worker import run_task

    out = tmp_path / "task"
    cfg = {**train_config, "epochs": 2000, "patience": 0, "output_dir": str(out / "out"), "auto_resume": True,
           "threads": 1}
    spec = TaskSpec(kind="train", app="models.train", workdir=str(out), config=cfg,
                    resources={"walltime_s": 12}, env={"OMP_NUM_THREADS": "1"})
    res = TaskResult.model_validate(run_task(spec.model_dump(), in_process=False))
    assert res.exit_cause is ExitCause.WALLTIME and res.returncode == 0, res.error
    assert res.result is not None and res.result["stop_reason"] == "preempted"
    assert "checkpointed at step" in (res.error or "")
    last = checkpoint.load(res.result["checkpoints"]["last"]["path"])
    assert last["step"] == res.result["steps"] > 0
