"""Per-epoch metrics as JSON lines: one object per (epoch, split, head, name) with its value.

``metrics.jsonl`` lines look like ``{"epoch": 3, "split": "val", "head": 0, "name": "force_mae", "value": 0.04}``
(``head`` is ``null`` for run-level figures such as the total loss or the learning rate).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from models.atomic_files import write_text_atomic


class MetricsWriter:
    """Append metrics lines; on resume, drop lines of epochs after the checkpoint so none are duplicated."""

    def __init__(self, path: str | os.PathLike[str], *, resume_after_epoch: int | None = None) -> None:
        """Args:
        path: The ``metrics.jsonl`` file.
        resume_after_epoch: When resuming, the checkpoint's last epoch; later lines are removed (atomically).
        """
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_after_epoch is not None and self.path.exists():
            kept = [
                ln
                for ln in self.path.read_text().splitlines()
                if ln.strip() and json.loads(ln)["epoch"] <= resume_after_epoch
            ]
            write_text_atomic(self.path, "".join(k + "\n" for k in kept))
        elif resume_after_epoch is None and self.path.exists():
            self.path.unlink()

    def write(self, epoch: int, split: str, values: Mapping[int | None, Mapping[str, float]]) -> None:
        """Append ``values`` = ``{head_or_None: {name: value}}`` for one epoch and split, then flush."""
        lines = [
            json.dumps({"epoch": epoch, "split": split, "head": head, "name": name, "value": float(v)})
            for head, named in values.items()
            for name, v in named.items()
        ]
        with open(self.path, "a") as fh:
            fh.write("".join(ln + "\n" for ln in lines))
            fh.flush()
            os.fsync(fh.fileno())


def read_metrics(path: str | os.PathLike[str], *, tail_bytes: int | None = None) -> list[dict[str, Any]]:
    """Every complete line of a metrics file as a dict: the one reader of the format. A run still writing it may
    leave a partial last line, which is skipped; a file not written yet reads as no rows.

    Args:
        path: The ``metrics.jsonl`` file.
        tail_bytes: Read only the file's last ``tail_bytes`` bytes (the latest epochs of a long run, for a
            progress display); the first, cut line is dropped.
    """
    try:
        if tail_bytes is None:
            lines = Path(path).read_text().splitlines()
        else:
            with open(path, "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - tail_bytes))
                lines = fh.read().decode("utf-8", errors="replace").splitlines()
                if size > tail_bytes:
                    lines = lines[1:]
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def val_loss_curve(rows: Iterable[Mapping[str, Any]]) -> list[float]:
    """The run-level validation loss per epoch (index = epoch), up to the first epoch missing."""
    by_epoch = {int(r["epoch"]): float(r["value"]) for r in select(rows, split="val", head=None, name="loss")}
    out: list[float] = []
    while len(out) in by_epoch:
        out.append(by_epoch[len(out)])
    return out


def select(rows: Iterable[Mapping[str, Any]], **match: Any) -> list[Mapping[str, Any]]:
    """The rows whose fields equal ``match`` (e.g. ``split="val", name="loss"``)."""
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]
