"""``models.train`` on two ranks (gloo on CPU) under the three launchers it parses: ``torchrun``, Slurm's ``srun``
and Open MPI's ``mpiexec``; tiny data, each run bounded by a timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from models import checkpoint
from models.training.metrics import read_metrics, select

REPO = Path(__file__).resolve().parents[3]


def _torchrun(cfg: dict[str, Any], tmp_path: Path, name: str) -> tuple[subprocess.CompletedProcess, Path]:
    cfg_path = tmp_path / f"{name}.json"
    cfg_path.write_text(json.dumps(cfg))
    result = tmp_path / f"{name}.result.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "models.train",
        "--config",
        str(cfg_path),
        "--result",
        str(result),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    return proc, result


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("head_groups", [False, True])
def test_two_ranks(train_config: dict[str, Any], tmp_path: Path, head_groups: bool) -> None:
    cfg = {**train_config, "epochs": 2, "head_groups": head_groups, "device": "cpu"}
    proc, result = _torchrun(cfg, tmp_path, "ddp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(result.read_text())
    assert res["status"] == "ok" and res["world_size"] == 2 and res["completed"] and res["launcher"] == "torchrun"
    assert res["head_groups"] == ({"0": [0], "1": [1]} if head_groups else None)
    rows = read_metrics(res["metrics_path"])
    val = select(rows, split="val", head=None, name="loss")
    assert [r["epoch"] for r in val] == [0, 1]  # written once (rank 0), not per rank
    # both heads were trained and validated (in grouped mode each on its own rank)
    assert {r["head"] for r in select(rows, split="val", name="force_mae")} == {0, 1}
    ckpt = checkpoint.load(res["checkpoints"]["last"]["path"])
    assert len(ckpt["ranks"]) == 2
    # every rank holds all parameters; AdamW's two moments exist for what the rank trains: with head groups,
    # the encoder and its own head only
    state = res["state_bytes"]
    assert state["total"] == state["parameters"] + state["optimizer"]
    if head_groups:
        assert state["optimizer"] < 2 * state["parameters"]
    else:
        assert state["optimizer"] >= 2 * state["parameters"]


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(600)
def test_two_ranks_under_srun(train_config: dict[str, Any], tmp_path: Path) -> None:
    """A real ``srun`` step: rank, world size and master address come from the Slurm variables."""
    cfg_path = tmp_path / "srun.json"
    cfg_path.write_text(json.dumps({**train_config, "epochs": 1, "head_groups": True, "device": "cpu"}))
    result = tmp_path / "srun.result.json"
    cmd = [
        "srun",
        "--ntasks=2",
        "--cpus-per-task=1",
        "--time=5",
        "--export=ALL,OMP_NUM_THREADS=1",
        sys.executable,
        "-m",
        "models.train",
        "--config",
        str(cfg_path),
        "--result",
        str(result),
    ]
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(result.read_text())
    assert res["status"] == "ok" and res["world_size"] == 2 and res["head_groups"] == {"0": [0], "1": [1]}
    assert res["launcher"] == "slurm"


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.timeout(600)
def test_two_ranks_under_mpiexec(train_config: dict[str, Any], tmp_path: Path) -> None:
    """A real Open MPI ``mpiexec -n 2``: rank, world size and local size come from the OMPI variables, the master
    address is this host (every rank is local), multi-task head groups across the two ranks."""
    cfg_path = tmp_path / "mpi.json"
    cfg_path.write_text(json.dumps({**train_config, "epochs": 1, "head_groups": True, "device": "cpu"}))
    result = tmp_path / "mpi.result.json"
    cmd = ["mpiexec", "-n", "2", "--oversubscribe", "-x", "OMP_NUM_THREADS=1", sys.executable, "-m", "models.train",
           "--config", str(cfg_path), "--result", str(result)]
    if os.geteuid() == 0:
        cmd[1:1] = ["--allow-run-as-root"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") and not k.startswith("SLURM_")}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(result.read_text())
    assert res["status"] == "ok" and res["world_size"] == 2 and res["completed"] and res["launcher"] == "mpi"
    assert res["head_groups"] == {"0": [0], "1": [1]}
    assert len(checkpoint.load(res["checkpoints"]["last"]["path"])["ranks"]) == 2


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_each_rank_holds_its_share_of_the_data(train_config: dict[str, Any], tmp_path: Path) -> None:
    """Two ranks: ``data_in_memory: share`` holds about half the rows ``all`` holds per rank, and
    trains to the same figures (the same graphs are read, from memory or from the files)."""
    runs = {}
    for mode in ("all", "share", "none"):
        cfg = {**train_config, "epochs": 2, "device": "cpu", "data_in_memory": mode,
               "output_dir": str(tmp_path / mode)}
        proc, result = _torchrun(cfg, tmp_path, mode)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[mode] = json.loads(result.read_text())
    assert runs["none"]["data_bytes"] == 0 < runs["share"]["data_bytes"]  # nothing held: all read from the files
    assert runs["share"]["data_bytes"] < 0.65 * runs["all"]["data_bytes"]
    for mode in ("share", "none"):
        assert [r for r in runs[mode]["history"] if r["split"] == "val"] == \
            [r for r in runs["all"]["history"] if r["split"] == "val"], mode
