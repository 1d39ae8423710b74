"""The demo-data app's contract: :class:`DemoConfig` in (one shard of a demo dataset), :class:`DemoResult` out.

See :mod:`models.demo` for what the app does with it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from models.contracts import Result, Strict, validate


class DemoConfig(Strict):
    """Structures ``start … start+count-1`` of a registry dataset with a ``generator``, written to ``output``
    (extxyz; relative to the config's directory). ``count`` defaults to the generator's ``default_count``."""

    dataset: str
    output: str
    seed: int = Field(0, ge=0, strict=True)
    start: int = Field(0, ge=0, strict=True)
    count: int | None = Field(None, ge=0, strict=True)


class DemoResult(Result):
    """The written shard: its file (sha256, bytes), structures and atoms, and how long labelling took (s)."""

    status: Literal["ok"] = "ok"
    dataset: str
    head_id: int
    output: str
    sha256: str
    bytes: int
    seed: int
    start: int
    count: int
    atoms: int
    seconds: float


def read_result(raw: Any, where: str) -> DemoResult:
    """A finished demo shard's result (:class:`models.appio.BadInput` naming ``where`` if it is not one)."""
    return validate(DemoResult, raw, where)
