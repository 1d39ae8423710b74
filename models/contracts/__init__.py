"""The typed contracts between the campaign and the apps: configs in, results out, model hyperparameters.

Every app (``python -m models.<app>``) reads a config validated by one of these pydantic models and returns a
result the campaign reads through another; the recipe and the model builder share one hyperparameter schema per
message-passing family. Importing this package needs pydantic and the standard library only (no torch, numpy or
PyG): the driver on a login node builds and checks configs without the model stack (an import contract checks it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from models.appio import BadInput

T = TypeVar("T")


class Strict(BaseModel):
    """A config or result object: unknown fields are refused, so a misspelt name fails where it is written, and
    so are non-finite numbers (a loss that is NaN is a failed run, never a result)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Result(BaseModel):
    """What an app returns: unknown fields are refused (a drift from the contract is caught where it is read);
    a metric may be NaN (a head without force labels, an empty split), so non-finite numbers pass."""

    model_config = ConfigDict(extra="forbid")


class OutputFile(Result):
    """A file an app wrote, with its sha256 (hex) and size in bytes."""

    path: str
    sha256: str
    bytes: int


class AppFailure(Result):
    """What an app that ran and failed returns (exit status 1): a short machine-readable reason (``nan``,
    ``bad_input``, an exception's name) and the message."""

    status: Literal["failed"] = "failed"
    reason: str
    message: str


def app_failure(raw: Any) -> AppFailure | None:
    """``raw`` (a task's stored result) as an :class:`AppFailure`, or None when it is not one."""
    try:
        return AppFailure.model_validate(raw)
    except ValidationError:
        return None


def reason(err: Mapping[str, Any]) -> str:
    """Pydantic's reason for one error, worded for a person (an extra field reads as an unknown one)."""
    if err["type"] == "extra_forbidden":
        return "unknown field (misspelt, or not a setting of this config)"
    return str(err["msg"]).removeprefix("Value error, ")


def field_name(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """A pydantic error location as a person writes it: ``datasets[0].name``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def error_text(exc: ValidationError, where: str) -> str:
    """One line naming ``where`` (a file or a config's name), the first bad field and the reason."""
    err = exc.errors()[0]
    field = field_name(err["loc"])
    msg = reason(err)
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{where}: field '{field}': {msg}{more}"


def validate(schema: type[T] | TypeAdapter[T], raw: Any, where: Path | str) -> T:
    """``raw`` validated as ``schema``, or :class:`models.appio.BadInput` naming ``where`` and the field."""
    adapter = schema if isinstance(schema, TypeAdapter) else TypeAdapter(schema)
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        raise BadInput(error_text(exc, str(where))) from None
