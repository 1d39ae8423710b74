"""Checkpoint files: atomic writes, a sha256 sidecar, and the RNG state needed for an exact resume.

A checkpoint is a ``torch.save`` dict written to a temporary file in the target directory, fsynced and
``os.replace``-d into place; its sha256 goes to ``<path>.sha256`` (``sha256sum`` format, also written
atomically). :func:`load` verifies the hash when the sidecar exists. Everything stored is plain tensors,
numbers, strings, lists and dicts so that ``torch.load(weights_only=True)`` reads it.

Keys written by the training app (see :mod:`models.train`): ``format``, ``model_config`` (all that
``models.nn.model.build_model`` needs), ``model_state``, ``optimizer``, ``scheduler``, ``early_stopping``,
``epoch``, ``step``, ``best``, ``ranks`` (per-rank ``rng`` and ``loader`` states), ``train_config``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from models.atomic_files import atomic_write, sha256_file

FORMAT = "campaign-checkpoint/1"


class ChecksumMismatch(OSError):
    """The file's sha256 differs from the one recorded next to it."""


def sidecar(path: str | os.PathLike[str]) -> Path:
    """The path of the sha256 sidecar of ``path``."""
    p = Path(path)
    return p.with_name(p.name + ".sha256")


def save(payload: dict[str, Any], path: str | os.PathLike[str]) -> str:
    """Write ``payload`` atomically to ``path`` and its sha256 sidecar.

    Args:
        payload: The checkpoint dict (tensors, numbers, strings, lists, dicts).
        path: Destination file.

    Returns:
        The sha256 hex digest of the written file.
    """
    path = Path(path)
    payload = {"format": FORMAT, **payload}
    atomic_write(path, lambda fh: torch.save(payload, fh))
    digest = sha256_file(path)
    line = f"{digest}  {path.name}\n".encode()

    def write_line(fh: IO[bytes]) -> None:
        fh.write(line)

    atomic_write(sidecar(path), write_line)
    return digest


def recorded_sha256(path: str | os.PathLike[str]) -> str | None:
    """The digest recorded in ``path``'s sidecar, or ``None`` when there is none."""
    side = sidecar(path)
    if not side.exists():
        return None
    text = side.read_text().split()
    return text[0] if text else None


def load(
    path: str | os.PathLike[str],
    *,
    expected_sha256: str | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Read a checkpoint, verifying its sha256 against ``expected_sha256`` or the sidecar.

    Raises:
        FileNotFoundError: when the file does not exist.
        ChecksumMismatch: when the digest differs (a truncated or altered file).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    want = expected_sha256 or recorded_sha256(path)
    if want is not None:
        got = sha256_file(path)
        if got != want:
            raise ChecksumMismatch(f"{path}: sha256 {got} differs from the recorded {want}")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint")
    return payload


def rng_state() -> dict[str, Any]:
    """This process's random states (python, numpy, torch CPU, and CUDA when present) as plain data."""
    py = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the random states saved by :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())
