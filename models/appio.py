"""The command-line contract shared by every ``python -m models.<app>``.

``--config PATH`` (a JSON file) in; ``--result PATH`` (a JSON file, written atomically by rank 0) out.
Exit status: 0 success, 1 the run failed (the result file says why: ``{"status": "failed", "reason": …}``),
2 bad input (a message naming the file and field on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class BadInput(ValueError):
    """Bad input to an app. The message names the file and the field or line."""


class RunFailed(RuntimeError):
    """The app ran and failed (NaN loss, diverged, …). ``reason`` is a short machine-readable cause."""

    def __init__(self, message: str, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> None:
    """Write ``payload`` as JSON to ``path`` through a temporary file and ``os.replace``.

    A reader sees either the old file or the complete new one, never a partial write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, sort_keys=True, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON config, raising :class:`BadInput` naming the file and line on error."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise BadInput(f"{path}: cannot read config ({exc.strerror})") from exc
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(cfg, dict):
        raise BadInput(f"{path}: the config must be a JSON object")
    return cfg


def is_rank_zero() -> bool:
    """Whether this process is rank 0 of its launch (torchrun, Slurm, MPI) or not launched in parallel."""
    for var in ("RANK", "OMPI_COMM_WORLD_RANK", "PALS_RANKID", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if var in os.environ:
            return os.environ[var] == "0"
    return True


def main_for(app: Callable[[dict[str, Any], Path], dict[str, Any]], description: str) -> None:
    """Run ``app(config, config_path)`` with the shared CLI contract and exit with the right status.

    Args:
        app: Callable receiving the parsed config and its path, returning the result dict.
        description: Shown by ``--help``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="JSON config file")
    parser.add_argument("--result", default=None, help="where rank 0 writes the JSON result")
    args = parser.parse_args()
    result_path = Path(args.result) if args.result else None
    try:
        cfg = load_config(args.config)
        result = app(cfg, Path(args.config))
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except RunFailed as exc:
        print(f"failed: {exc}", file=sys.stderr)
        if result_path is not None and is_rank_zero():
            write_json_atomic(result_path, {"status": "failed", "reason": exc.reason, "message": str(exc)})
        sys.exit(EXIT_FAILED)
    if result_path is not None and is_rank_zero():
        write_json_atomic(result_path, {"status": "ok", **result})
    sys.exit(EXIT_OK)
