"""The training app end to end on real stores: results, metrics, checkpoints, exact resume, walltime chunks,
NaN failure and the CLI contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models import checkpoint
from models.appio import BadInput, RunFailed
from models.contracts.train import TrainResult, parse_config
from models.nn.model import build_model
from models.train import run
from models.training.metrics import read_metrics, select
from tests.models.train.emt_data import metal_atoms, write_dataset

REPO = Path(__file__).resolve().parents[3]


def _train(cfg: dict[str, Any]) -> dict[str, Any]:
    return run(parse_config(cfg, "run.json"), "run.json")


def test_result_metrics_and_checkpoints(train_config: dict[str, Any]) -> None:
    res = _train(train_config)
    assert res["completed"] and res["stop_reason"] == "epochs" and res["last_epoch"] == 3
    rows = read_metrics(res["metrics_path"])
    val = {r["epoch"]: r["value"] for r in select(rows, split="val", head=None, name="loss")}
    assert sorted(val) == [0, 1, 2, 3]
    # the objective is the best epoch's validation loss, not the last one
    assert res["best_epoch"] == min(val, key=val.get)
    assert res["objective"] == pytest.approx(val[res["best_epoch"]]) == pytest.approx(min(val.values()))
    assert set(res["best_val_metrics"]) == {"0", "1"}
    assert {"loss", "energy_mae_per_atom", "force_mae"} <= set(res["best_val_metrics"]["0"])
    assert val[3] < val[0]  # it learns
    assert res["history"] == rows  # the per-epoch figures travel by value: no shared filesystem needed to read them
    assert TrainResult.model_validate(res).checkpoints["best"].path == res["checkpoints"]["best"]["path"]
    assert res["train_graphs_per_s"] > 0 and res["peak_memory_bytes"] > 10_000_000
    for kind in ("last", "best"):
        info = res["checkpoints"][kind]
        assert checkpoint.sha256_file(info["path"]) == info["sha256"]
    best = checkpoint.load(res["checkpoints"]["best"]["path"])
    assert best["epoch"] == res["best_epoch"]
    # the checkpoint alone rebuilds the model
    model = build_model(best["model_config"]).double()
    model.load_state_dict(best["model_state"])
    assert model.head_ids == [0, 1]


def test_resume_continues_exactly(train_config: dict[str, Any], tmp_path: Path) -> None:
    straight = _train(train_config)
    chunk_cfg = {**train_config, "output_dir": str(tmp_path / "chunks"), "chunk_epochs": 2}
    first = _train(chunk_cfg)
    assert not first["completed"] and first["stop_reason"] == "chunk_epochs" and first["last_epoch"] == 1
    second = _train({**chunk_cfg, "chunk_epochs": None, "resume_from": first["checkpoints"]["last"]["path"]})
    assert second["completed"] and second["last_epoch"] == 3 and second["steps"] == straight["steps"]
    a = checkpoint.load(straight["checkpoints"]["last"]["path"])
    b = checkpoint.load(second["checkpoints"]["last"]["path"])
    for name, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][name]), name
    assert second["objective"] == straight["objective"] and second["best_epoch"] == straight["best_epoch"]
    rows = read_metrics(second["metrics_path"])
    assert [r["epoch"] for r in select(rows, split="val", head=None, name="loss")] == [0, 1, 2, 3]


def test_auto_resume_continues_a_retried_attempt(train_config: dict[str, Any], tmp_path: Path) -> None:
    straight = _train(train_config)
    cfg = {**train_config, "output_dir": str(tmp_path / "retried"), "auto_resume": True}
    first = _train({**cfg, "chunk_epochs": 1})  # the first attempt is cut after one epoch
    assert first["resumed_from_epoch"] is None and first["last_epoch"] == 0
    second = _train(cfg)  # the same config again: picks up last.pt on its own
    assert second["resumed_from_epoch"] == 1 and second["completed"] and second["steps"] == straight["steps"]
    assert second["objective"] == straight["objective"]


def test_stop_file_ends_the_run_at_an_epoch_boundary(train_config: dict[str, Any], tmp_path: Path) -> None:
    stop = tmp_path / "STOP"
    stop.write_text("pruned by the campaign")
    res = _train({**train_config, "stop_file": str(stop)})
    # one epoch always runs, then the request is honoured; the run still reports its best epoch
    assert res["completed"] and res["stop_reason"] == "stopped" and res["last_epoch"] == 0
    assert res["objective"] is not None and res["checkpoints"]["best"]["path"]


def test_time_limit_stops_at_epoch_boundary(train_config: dict[str, Any]) -> None:
    res = _train({**train_config, "time_limit_s": 1e-3})
    # a chunk always makes one epoch of progress, then stops before the limit would be crossed
    assert not res["completed"] and res["stop_reason"] == "time_limit" and res["last_epoch"] == 0
    assert checkpoint.load(res["checkpoints"]["last"]["path"])["epoch"] == 0


def test_early_stopping_and_plateau(train_config: dict[str, Any]) -> None:
    cfg = {
        **train_config,
        "epochs": 30,
        "patience": 1,
        "min_delta": 1e9,
        "scheduler": {"kind": "plateau", "patience": 0},
    }
    res = _train(cfg)
    assert res["stop_reason"] == "early_stopping" and res["last_epoch"] == 1 and res["best_epoch"] == 0


def test_nan_label_fails_the_run(tmp_path: Path, train_config: dict[str, Any]) -> None:
    root = tmp_path / "bad"
    write_dataset(root, "metals", 0, {"train": metal_atoms(4, 7), "val": metal_atoms(2, 8)})
    train = root / "metals" / "train"
    from models.data.shards import pack_graphs, write_split
    from models.data.store import GraphStore

    store = GraphStore(train, dtype=torch.float64)
    arrays = store.gather(np.arange(len(store)))
    records = []
    for g in range(len(store)):
        b = store.get_batch([g])
        records.append(
            {
                "z": b.z.numpy(),
                "pos": b.pos.numpy(),
                "forces": b.forces.numpy(),
                "cell": b.cell[0].numpy(),
                "pbc": b.pbc[0].numpy(),
                "energy": float("nan") if g == 2 else float(b.energy[0]),
                "eref": 0.0,
                "stress": b.stress[0].numpy(),
                "sid": int(b.sid[0]),
                "edge_index": b.edge_index.numpy(),
                "shift": b.shift.numpy(),
            }
        )
    assert arrays["energy"].shape == (4,)
    write_split(train, pack_graphs(records), store.attrs)
    cfg = {**train_config, "data_root": str(root), "datasets": ["metals"]}
    with pytest.raises(RunFailed) as info:
        _train(cfg)
    assert info.value.reason == "nan" and "non-finite" in str(info.value)


def test_bad_config_names_the_field(train_config: dict[str, Any]) -> None:
    with pytest.raises(BadInput, match=r"run.json: field 'precision'"):
        parse_config({**train_config, "precision": "fp16"}, "run.json")
    with pytest.raises(BadInput, match=r"field 'epochs'"):
        parse_config({**train_config, "epochs": 0}, "run.json")
    with pytest.raises(BadInput, match=r"field 'model'"):
        parse_config({k: v for k, v in train_config.items() if k != "model"}, "run.json")
    with pytest.raises(BadInput, match="unknown"):
        _train({**train_config, "model": {**train_config["model"], "colour": 1}})
    with pytest.raises(BadInput, match="nosuch"):
        _train({**train_config, "datasets": ["nosuch"]})


def test_cli_contract(train_config: dict[str, Any], tmp_path: Path) -> None:
    cfg_path = tmp_path / "run.json"
    cfg_path.write_text(json.dumps({**train_config, "epochs": 1}))
    result = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "models.train", "--config", str(cfg_path), "--result", str(result)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(result.read_text())
    assert out["status"] == "ok" and out["completed"] and out["last_epoch"] == 0
    cfg_path.write_text(json.dumps({**train_config, "batch_size": "four"}))
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "field 'batch_size'" in proc.stderr and "run.json" in proc.stderr


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_lower_precisions_train(train_config: dict[str, Any], precision: str) -> None:
    res = _train({**train_config, "epochs": 2, "precision": precision})
    assert res["completed"] and res["precision"] == precision
    assert np.isfinite(res["objective"])
    state = checkpoint.load(res["checkpoints"]["last"]["path"])["model_state"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())  # bf16: fp32 master


def test_direct_force_model_trains_and_predicts(train_config: dict[str, Any]) -> None:
    """``forces: direct``: the force loss trains the vector head (one backward per step), it learns, and the
    checkpoint's predictor gives those forces."""
    from models.inference import Predictor

    res = _train({**train_config, "epochs": 3, "model": {**train_config["model"], "forces": "direct"}})
    assert res["completed"]
    rows = read_metrics(res["metrics_path"])
    f_mae = {r["epoch"]: r["value"] for r in select(rows, split="val", head=0, name="force_mae")}
    assert f_mae[2] < f_mae[0]
    pred = Predictor.from_checkpoint(res["checkpoints"]["best"]["path"], precision="fp64")
    assert pred.model.direct_forces and pred.model.config["node_heads"] == [{"name": "forces", "kind": "vector"}]
