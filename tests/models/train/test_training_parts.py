"""Schedules, early stopping and the metrics writer."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from models.training.early_stopping import EarlyStopping
from models.training.metrics import MetricsWriter, read_metrics, select
from models.training.schedule import Schedule


def _opt(lr: float = 1e-3) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def test_warmup_cosine_curve_and_resume() -> None:
    opt = _opt()
    s = Schedule(opt, {"kind": "cosine", "warmup_steps": 4, "min_lr_ratio": 0.1}, total_steps=20)
    lrs = [s.lr]
    for _ in range(25):
        opt.step()
        s.after_step()
        lrs.append(s.lr)
    assert lrs[0] == pytest.approx(1e-3 / 4) and lrs[3] == pytest.approx(1e-3)
    assert lrs[4] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:21]))
    assert lrs[20] == pytest.approx(1e-4) and lrs[25] == pytest.approx(1e-4)
    # resume mid-curve
    opt2 = _opt()
    s2 = Schedule(opt2, {"kind": "cosine", "warmup_steps": 4, "min_lr_ratio": 0.1}, total_steps=20)
    opt3 = _opt()
    s3 = Schedule(opt3, {"kind": "cosine", "warmup_steps": 4, "min_lr_ratio": 0.1}, total_steps=20)
    for _ in range(7):
        s2.after_step()
    s3.load_state_dict(s2.state_dict())
    s2.after_step()
    s3.after_step()
    assert s3.lr == s2.lr == pytest.approx(lrs[8])


def test_plateau_reduces_after_patience() -> None:
    opt = _opt()
    s = Schedule(opt, {"kind": "plateau", "warmup_steps": 2, "factor": 0.5, "patience": 1}, total_steps=0)
    s.after_step()
    s.after_step()
    assert s.lr == pytest.approx(1e-3)
    for loss in (1.0, 1.0, 1.0):
        s.after_epoch(loss)
    assert s.lr == pytest.approx(5e-4)
    s.after_step()  # steps after warmup leave the plateau's rate alone
    assert s.lr == pytest.approx(5e-4)
    with pytest.raises(ValueError, match=r"scheduler\.kind"):
        Schedule(_opt(), {"kind": "linear"}, total_steps=1)


def test_early_stopping_tracks_best() -> None:
    es = EarlyStopping(patience=2, min_delta=0.01)
    assert es.update(0, 1.0) and not es.should_stop
    assert es.update(1, 0.5)
    assert not es.update(2, 0.495)  # below min_delta
    assert not es.update(3, 0.6) and es.should_stop
    assert (es.best_epoch, es.best_loss) == (1, 0.5)
    es2 = EarlyStopping(patience=2)
    es2.load_state_dict(es.state_dict())
    assert es2.should_stop and es2.best_epoch == 1
    never = EarlyStopping(patience=0)
    for e in range(5):
        never.update(e, 1.0 + e)
    assert not never.should_stop and math.isclose(never.best_loss, 1.0)


def test_metrics_writer_resume_drops_later_epochs(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    w = MetricsWriter(path)
    for epoch in range(3):
        w.write(epoch, "val", {0: {"loss": epoch + 0.5, "force_mae": 0.1}, None: {"loss": 1.0}})
    rows = read_metrics(path)
    assert len(rows) == 9
    assert select(rows, epoch=2, split="val", head=0, name="loss")[0]["value"] == 2.5
    MetricsWriter(path, resume_after_epoch=1).write(2, "val", {0: {"loss": 7.0}})
    rows = read_metrics(path)
    assert [r["value"] for r in select(rows, epoch=2)] == [7.0]
    MetricsWriter(path)  # a fresh run starts a fresh file
    assert not path.exists()
