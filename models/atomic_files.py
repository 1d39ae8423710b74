"""Atomic file writes and content hashes: the one implementation every writer of results, checkpoints, stores,
reports and exports uses.

A write goes to a temporary file beside the target, is flushed to disk, then renamed over the target: a reader
(or a process killed mid-write) sees the old file or the complete new one, never a partial one. Standard
library only, so the steering process and workers import it cheaply.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_path(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (e.g. ``ase.io.write``); renamed
    over ``path`` when the block ends without error, removed otherwise. ``mode``: the file's permissions
    (``mkstemp`` would leave 0600)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None], mode: int = 0o644) -> None:
    """Call ``write(fh)`` on a binary temporary file, then rename it over ``path``."""
    with atomic_path(path, mode) as tmp, open(tmp, "wb") as fh:
        write(fh)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically."""
    def _write(fh: IO[bytes]) -> None:
        fh.write(data)

    atomic_write(path, _write, mode)


def write_text_atomic(path: str | os.PathLike[str], text: str, mode: int = 0o644) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"), mode)


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> None:
    """Write ``payload`` as JSON (indented, sorted keys, non-JSON values as strings) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str))
