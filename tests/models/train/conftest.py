"""Fixtures: a tiny two-dataset EMT store (metals -> head 0, molecules -> head 1) and a tiny PaiNN config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.models.train.emt_data import demo_root

TINY_PAINN: dict[str, Any] = {
    "family": "painn",
    "hidden": 16,
    "layers": 2,
    "cutoff": 4.0,
    "num_rbf": 8,
    "heads": [0, 1],
    "max_z": 80,
}


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train/val/test stores of 12/6/6 graphs per dataset (EMT labels)."""
    return demo_root(tmp_path_factory.mktemp("emt") / "stores")


@pytest.fixture
def train_config(data_root: Path, tmp_path: Path) -> dict[str, Any]:
    """A small fp64 training config writing under ``tmp_path/out``."""
    return {
        "data_root": str(data_root),
        "datasets": ["metals", "molecules"],
        "batch_size": 4,
        "model": dict(TINY_PAINN),
        "epochs": 4,
        "precision": "fp64",
        "optimizer": {"lr": 0.005},
        "scheduler": {"kind": "cosine", "warmup_steps": 2},
        "output_dir": str(tmp_path / "out"),
        "seed": 3,
    }
