"""Precision rules for bf16 / fp32 / fp64 runs (the seed work's precision study).

Rules:

* ``fp32`` / ``fp64``: ``model.to(param_dtype(p))`` and ``cast_batch(batch, p)``; no autocast.
* ``bf16``: parameters and batch stay fp32; the encoder runs under ``torch.autocast(dtype=torch.bfloat16)``
  (``precision_context``). :class:`models.nn.model.MultiHeadModel` computes the edge vectors, the heads, the
  per-graph sums, and the force/stress gradients in fp32 (autocast is switched off there), and the loss casts
  predictions to the label dtype.

Usage::

    model.to(param_dtype(p)); batch = cast_batch(batch, p)
    with precision_context(p, device):
        pred = model(batch)
    loss, metrics = multitask_loss(pred, batch)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch_geometric.data import Batch, Data

from models import keys

PRECISIONS: tuple[str, ...] = ("bf16", "fp32", "fp64")
FLOAT_KEYS: tuple[str, ...] = (keys.POS, keys.CELL, keys.ENERGY, keys.FORCES, keys.STRESS, keys.EREF)


def _check(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} unknown; choose one of {PRECISIONS}")


def param_dtype(precision: str) -> torch.dtype:
    """dtype of the parameters and of the batch's float fields: fp64 -> float64, bf16 and fp32 -> float32."""
    _check(precision)
    return torch.float64 if precision == "fp64" else torch.float32


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device | str) -> Iterator[None]:
    """Context for the forward pass: bf16 autocast for ``"bf16"``, nothing for ``"fp32"``/``"fp64"``.

    Args:
        precision: ``"bf16"``, ``"fp32"`` or ``"fp64"``.
        device: Device the model runs on (its type picks the autocast backend).
    """
    _check(precision)
    if precision == "bf16":
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            yield
    else:
        yield


def cast_batch(batch: Batch | Data, precision: str) -> Batch | Data:
    """Cast the float fields of ``batch`` (positions, cell, labels, eref) to ``param_dtype(precision)`` in place.

    Returns:
        The same batch object.
    """
    dtype = param_dtype(precision)
    for key in FLOAT_KEYS:
        value = getattr(batch, key, None)
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
            batch[key] = value.to(dtype)
    return batch
