"""ADIOS2 output shards of a screening run: per-head energies, uncertainty, optionally forces.

One shard is one BP directory written by one screening task. Results stream into it in ADIOS2 steps (one step
per flushed block of structures, so memory stays bounded however large the shard), under a temporary name that
is renamed into place when the shard closes: a reader never sees a half-written shard.

Variables of each step, for ``G`` structures, ``N`` atoms and ``H`` evaluated heads:

==================  ===============  ===============================================================
variable            shape            meaning
==================  ===============  ===============================================================
``index``           [G] int64        position of the structure in its source (candidate number, frame…)
``sid``             [G] int64        stable structure id (store ``sid``; equals ``index`` otherwise)
``natoms``          [G] int64        atoms per structure
``energy``          [G, H] float64   energy of each head, eV (ensemble mean for an ensemble)
``energy_std``      [G, H] float64   standard deviation over ensemble members, eV (0 for one model)
``score``           [G] float64      criterion score, lower first (meta "criterion"; energy: energy per atom, eV/atom)
``uncertainty``     [G] float64      ensemble std of the criterion head's energy per atom, eV/atom
``z``               [N] int64        atomic numbers (only with forces)
``forces``          [N, 3] float64   forces of the criterion head, eV/Å (only when written)
==================  ===============  ===============================================================

The attribute ``meta`` (JSON) holds the heads, the criterion head, the models, the source and the shard number.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import adios2
import numpy as np

GRAPH_VARS = ("index", "sid", "natoms", "energy", "energy_std", "score", "uncertainty")
ATOM_VARS = ("z", "forces")


class ScreenWriter:
    """Stream blocks of screening results into one ADIOS2 shard, atomically.

    Args:
        path: Final ``*.bp`` directory.
        meta: JSON-serialisable attributes (heads, criterion head, models, source, shard).
        with_forces: Whether blocks carry ``z`` and ``forces``.

    Use as a context manager; the shard appears at ``path`` only when the block exits without an error.
    """

    def __init__(self, path: str | os.PathLike[str], meta: dict[str, Any], with_forces: bool = False) -> None:
        self.path = Path(path)
        self.meta = dict(meta)
        self.with_forces = with_forces
        self.steps = 0
        self.structures = 0
        self._tmp: Path | None = None
        self._stream: Any = None

    def __enter__(self) -> ScreenWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent))
        os.chmod(self._tmp, 0o755)
        self._stream = adios2.Stream(str(self._tmp / "data.bp"), "w")
        return self

    def write(self, block: dict[str, np.ndarray]) -> None:
        """Append one block (a step): arrays keyed as in the module table (``z``/``forces`` with forces)."""
        g = int(block["natoms"].shape[0])
        if g == 0:
            return
        s = self._stream
        s.begin_step()
        names = GRAPH_VARS + (ATOM_VARS if self.with_forces else ())
        for name in names:
            a = np.ascontiguousarray(block[name])
            if a.size == 0:
                continue
            s.write(name, a, list(a.shape), [0] * a.ndim, list(a.shape))
        if self.steps == 0:
            s.write_attribute("meta", json.dumps({**self.meta, "with_forces": self.with_forces}, sort_keys=True))
        s.end_step()
        self.steps += 1
        self.structures += g

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._tmp is not None
        if self.steps == 0 and exc_type is None:  # ADIOS2 keeps attributes only with a step: write an empty one
            self._stream.begin_step()
            self._stream.write_attribute("meta", json.dumps({**self.meta, "with_forces": self.with_forces},
                                                            sort_keys=True))
            self._stream.end_step()
        self._stream.close()
        if exc_type is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            return
        bp = self._tmp / "data.bp"
        (bp / "profiling.json").unlink(missing_ok=True)  # timings: identical runs would differ
        for p in bp.iterdir():
            os.replace(p, self._tmp / p.name)
        bp.rmdir()
        if self.path.exists():
            trash = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
            os.replace(self.path, trash)
            os.replace(self._tmp, self.path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self._tmp, self.path)


def read_output(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a whole output shard back: arrays concatenated over steps, and its ``meta``.

    Raises:
        ValueError: ``path`` is not a readable screening output shard.
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: no such screening output shard")
    parts: dict[str, list[np.ndarray]] = {}
    meta: dict[str, Any] = {}
    try:
        with adios2.Stream(str(path), "r") as s:
            for _ in s.steps():
                if not meta:
                    raw = s.read_attribute("meta")
                    meta = json.loads(raw[0] if isinstance(raw, list) else raw)
                for name in s.available_variables():
                    parts.setdefault(name, []).append(np.asarray(s.read(name)))
    except Exception as exc:
        raise ValueError(f"{path}: unreadable screening output ({type(exc).__name__}: {exc})") from exc
    out = {k: np.concatenate(v) for k, v in parts.items()}
    h = len(meta.get("heads", []))
    for name in GRAPH_VARS:
        if name not in out:
            out[name] = np.zeros((0, h) if name in ("energy", "energy_std") else (0,))
    return out, meta
