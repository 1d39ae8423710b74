"""What every reader of a published format checks the same way: a numeric field's shape and finiteness, and that
the registry's units are the ones the format fixes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from models.appio import BadInput


def numeric(value: Any, shape: tuple[int, ...] | None, where: str, field: str) -> np.ndarray:
    """``value`` (a number, list, NumPy array or torch tensor) as a finite float64 array of ``shape``
    (``None``: any shape).

    Raises:
        BadInput: naming ``where`` and ``field`` when it is not numeric, has another shape or a non-finite value.
    """
    try:
        arr = np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype=np.float64)
    except (TypeError, ValueError, RuntimeError):
        raise BadInput(f"{where}: field '{field}' is not numeric") from None
    if shape is not None and arr.shape != shape:
        raise BadInput(f"{where}: field '{field}' has shape {arr.shape}, expected {shape}")
    if not np.all(np.isfinite(arr)):
        raise BadInput(f"{where}: field '{field}' holds a non-finite value")
    return arr


def require_units(reader: str, source: str, units: Mapping[str, str] | None) -> None:
    """Refuse registry units other than eV, eV/Å and Å for a format that fixes them (``source`` names it).

    Raises:
        BadInput: naming the reader, the quantity and both units.
    """
    for name, expected in (("energy", "eV"), ("forces", "eV/Å"), ("length", "Å")):
        if units and units.get(name, expected) != expected:
            raise BadInput(f"reader {reader}: {source} stores {name} in {expected}, the registry says {units[name]}")
