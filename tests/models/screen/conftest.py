"""Tiny model checkpoints (PaiNN, 8 features) for the screening tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import checkpoint
from models.nn.model import build_model

TINY = {"family": "painn", "hidden": 8, "layers": 1, "cutoff": 4.0, "num_rbf": 6, "heads": [100, 101], "max_z": 90}
REFS = {"100": {"13": -3.0, "29": -3.5, "47": -2.8, "79": -3.2}}


def save_tiny(path: Path, seed: int) -> str:
    """Save a tiny two-head PaiNN (weights from ``seed``) with EMT-like element references; returns sha256."""
    torch.manual_seed(seed)
    model = build_model(dict(TINY))
    with torch.no_grad():
        for k, head in enumerate(model.heads.heads.values()):
            head.shift.weight.normal_(0, 0.2 * (k + 1))
    return checkpoint.save({"model_config": model.config, "model_state": model.state_dict(),
                            "head_references": REFS}, path)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str]]:
    """Two tiny checkpoints (an ensemble of two)."""
    root = tmp_path_factory.mktemp("ckpt")
    return [(root / f"m{k}.pt", save_tiny(root / f"m{k}.pt", k)) for k in range(2)]
