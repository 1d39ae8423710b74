"""Checkpoint I/O: atomic write, sha256 sidecar, tamper detection, exact RNG restore."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from models import checkpoint


def test_roundtrip_with_sidecar(tmp_path) -> None:
    path = tmp_path / "ckpt" / "last.pt"
    payload = {
        "model_state": {"w": torch.arange(6, dtype=torch.float64).view(2, 3)},
        "epoch": 3,
        "model_config": {"family": "painn", "heads": [0, 1]},
    }
    digest = checkpoint.save(payload, path)
    assert checkpoint.recorded_sha256(path) == digest == checkpoint.sha256_file(path)
    assert checkpoint.sidecar(path).read_text() == f"{digest}  last.pt\n"
    back = checkpoint.load(path)
    assert back["epoch"] == 3 and back["model_config"]["heads"] == [0, 1]
    assert torch.equal(back["model_state"]["w"], payload["model_state"]["w"])
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_corrupted_file_is_refused(tmp_path) -> None:
    path = tmp_path / "c.pt"
    checkpoint.save({"x": torch.ones(100)}, path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.ChecksumMismatch, match=r"c\.pt"):
        checkpoint.load(path)
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "missing.pt")


def test_rng_state_restores_every_generator(tmp_path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # leave a cached gaussian
    state = checkpoint.rng_state()
    checkpoint.save({"rng": state}, tmp_path / "r.pt")
    want = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random())
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "r.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1])
    assert want[2] == got[2] and want[3] == got[3]
