"""The command-line contract shared by every ``python -m models.<app>``.

``--config PATH`` (a JSON file) in; ``--result PATH`` (a JSON file, written atomically by rank 0) out.
Exit status: 0 success, 1 the run failed (the result file says why: ``{"status": "failed", "reason": …}``),
2 bad input (a message naming the file and field on stderr).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from models.atomic_files import write_json_atomic
from models.launch import detect

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
#: The :class:`models.contracts.AppFailure` reason of an app that ran out of host or device memory.
OOM_REASON = "oom"
#: The ``stop_reason`` of an app that checkpointed and stopped on the scheduler's warning signal
#: (:mod:`models.training.preemption`); the worker records such an attempt as ``walltime``.
PREEMPTED_STOP = "preempted"
#: Exception class names that mean "out of memory": ``MemoryError`` (host) and the ``OutOfMemoryError`` of
#: torch's device allocators (CUDA, XPU, MPS), matched by name so that this module needs no torch.
OOM_EXCEPTIONS = frozenset({"MemoryError", "OutOfMemoryError"})

#: errno values of a write the machine refused (full disk or quota, file too large, read-only or forbidden): the
#: app reports them as bad input (its output location is unusable), never as a crash.
WRITE_REFUSED = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                           errno.ENOTDIR})


class BadInput(ValueError):
    """Bad input to an app. The message names the file and the field or line."""


class RunFailed(RuntimeError):
    """The app ran and failed (NaN loss, diverged, …). ``reason`` is a short machine-readable cause."""

    def __init__(self, message: str, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with ``renameat2(RENAME_EXCHANGE)``; False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(new: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Move directory ``new`` to ``final``, replacing an existing ``final`` without a moment where neither exists.

    On Linux the two directories are swapped atomically (``renameat2`` with ``RENAME_EXCHANGE``) and the old
    one is then removed, so a process killed at any point leaves either the old or the new directory in place.
    Elsewhere the old directory is renamed aside first (a short window without ``final``).
    """
    new, final = Path(new), Path(final)
    if not final.exists():
        os.replace(new, final)
        return
    if _exchange(new, final):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old directory
        return
    trash = final.with_name(f".{final.name}.old-{os.getpid()}")
    os.replace(final, trash)
    os.replace(new, final)
    shutil.rmtree(trash, ignore_errors=True)


def write_refused(exc: BaseException) -> str | None:
    """``"<file>: <reason>"`` when ``exc`` is a write the machine refused (see :data:`WRITE_REFUSED`)."""
    if isinstance(exc, OSError) and exc.errno in WRITE_REFUSED:
        return f"{exc.filename or '?'}: cannot write ({exc.strerror})"
    text = str(exc)
    if isinstance(exc, RuntimeError) and "errno = " in text and "write" in text:  # ADIOS2's C++ exceptions
        import re

        clean = re.sub(r"\x1b\[[0-9;]*m", "", text)
        m = re.search(r"to file (\S+) : errno = (\d+): ([^\n]*)", clean)
        if m and int(m.group(2)) in WRITE_REFUSED:
            return f"{m.group(1)}: cannot write ({m.group(3).strip()})"
    return None


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
    return detect().rank == 0


def _exit_out_of_memory(exc: BaseException, result_path: Path | None) -> NoReturn:
    """Report an allocation failure as the reason :data:`OOM_REASON` and exit with :data:`EXIT_FAILED`."""
    from models.contracts import AppFailure

    text = f"{type(exc).__name__}: {exc}"[:2000]
    print(f"failed: out of memory: {text}", file=sys.stderr)
    if result_path is not None and is_rank_zero():
        write_json_atomic(result_path, AppFailure(reason=OOM_REASON, message=text).model_dump())
    sys.exit(EXIT_FAILED)


def main_for(app: Callable[[dict[str, Any], Path], dict[str, Any]], description: str) -> None:
    """Run ``app(config, config_path)`` with the shared CLI contract and exit with the right status.

    Args:
        app: Callable receiving the parsed config and its path, returning the result dict.
        description: Shown by ``--help``.
    """
    from models.contracts import AppFailure  # the contracts import BadInput from here

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
            write_json_atomic(result_path, AppFailure(reason=exc.reason, message=str(exc)).model_dump())
        sys.exit(EXIT_FAILED)
    except MemoryError as exc:
        _exit_out_of_memory(exc, result_path)
    except (OSError, RuntimeError) as exc:
        if type(exc).__name__ in OOM_EXCEPTIONS:  # a device allocator's OutOfMemoryError (a RuntimeError)
            _exit_out_of_memory(exc, result_path)
        refused = write_refused(exc)
        if refused is None:
            raise
        print(f"error: {refused}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    if result_path is not None and is_rank_zero():
        write_json_atomic(result_path, {"status": "ok", **result})
    sys.exit(EXIT_OK)
