"""The on-disk graph store: ADIOS2 shards of concatenated arrays plus per-graph offsets, one directory per
dataset split; how they are written and how one shard is read (NumPy and ADIOS2: writers need no PyG).

Layout of a split directory (``<root>/<dataset>/<split>/``)::

    index.json            shards, their graph/atom/edge counts and file sizes, the store attributes
    shard-00000.bp/       one ADIOS2 BP file per shard (parallel writers each write their own)
    shard-00001.bp/ …

Each shard holds, for ``G`` graphs, ``N`` atoms and ``E`` edges (float arrays in float64):

==================  ============  =====================================================================
variable            shape         meaning
==================  ============  =====================================================================
``z``               [N] int64     atomic numbers
``pos``             [N, 3]        positions, Å
``forces``          [N, 3]        forces, eV/Å (NaN where the graph has no forces)
``edges``           [E, 2] int32  (j, i) per edge, *local* to the graph (0 … natoms-1)
``shift``           [E, 3] int32  integer cell shifts
``natoms``          [G] int64     atoms per graph;  ``atom_offset`` [G] int64 its first atom
``nedges``          [G] int64     edges per graph;  ``edge_offset`` [G] int64 its first edge
``cell``            [G, 3, 3]     Å;  ``pbc`` [G, 3] uint8
``energy``/``eref`` [G]           eV; ``stress`` [G, 3, 3] eV/Å^3 (NaN where absent)
``sid``             [G] int64     stable structure id; ``has_forces``/``has_stress`` [G] uint8
``charge``/``spin`` [G] int64     total charge, spin multiplicity (0 = unknown)
==================  ============  =====================================================================

plus the string attribute ``meta`` (JSON: dataset, head id, units, reference energies, schema version, cutoff,
max_neighbours, shapes). ADIOS2 cannot store zero-sized variables, so those are left out and re-created from
the ``shapes`` entry. Writes are atomic: every directory is written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import adios2
import numpy as np

from models.appio import BadInput, write_json_atomic
from models.data.reference import reference_sums

SCHEMA_VERSION = 1
INDEX_NAME = "index.json"
ATOM_VARS = ("z", "pos", "forces")
EDGE_VARS = ("edges", "shift")
GRAPH_VARS = (
    "natoms", "nedges", "atom_offset", "edge_offset", "cell", "pbc", "energy", "eref", "stress", "sid",
    "has_forces", "has_stress", "charge", "spin",
)  # fmt: skip
ALL_VARS = ATOM_VARS + EDGE_VARS + GRAPH_VARS

# ----------------------------------------------------------------------------------------------- writing
def pack_graphs(graphs: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Concatenate per-graph records into the shard arrays.

    Args:
        graphs: Records with ``z`` [n], ``pos`` [n,3], ``forces`` [n,3] or None, ``cell`` [3,3], ``pbc`` [3],
            ``energy``, ``eref``, ``stress`` [3,3] or None, ``sid``, ``edge_index`` [2,e] (local j, i),
            ``shift`` [e,3], ``charge``, ``spin``.

    Returns:
        The arrays listed in the module docstring.
    """
    g = len(graphs)
    natoms = np.array([len(r["z"]) for r in graphs], dtype=np.int64)
    nedges = np.array([np.asarray(r["edge_index"]).shape[1] for r in graphs], dtype=np.int64)
    out: dict[str, np.ndarray] = {
        "natoms": natoms,
        "nedges": nedges,
        "atom_offset": np.cumsum(natoms) - natoms,
        "edge_offset": np.cumsum(nedges) - nedges,
    }
    cat = np.concatenate
    out["z"] = cat([np.asarray(r["z"], dtype=np.int64) for r in graphs]) if g else np.zeros(0, np.int64)
    out["pos"] = cat([np.asarray(r["pos"], dtype=np.float64) for r in graphs]) if g else np.zeros((0, 3))
    out["forces"] = (
        cat(
            [
                np.asarray(r["forces"], dtype=np.float64)
                if r.get("forces") is not None
                else np.full((len(r["z"]), 3), np.nan)
                for r in graphs
            ]
        )
        if g
        else np.zeros((0, 3))
    )
    out["edges"] = (
        cat([np.asarray(r["edge_index"], dtype=np.int32).T for r in graphs])
        if g
        else np.zeros((0, 2), np.int32)
    )
    out["edges"] = out["edges"].reshape(-1, 2)
    out["shift"] = (
        cat([np.asarray(r["shift"], dtype=np.int32).reshape(-1, 3) for r in graphs])
        if g
        else np.zeros((0, 3), np.int32)
    )
    out["cell"] = np.array([np.asarray(r["cell"], dtype=np.float64) for r in graphs]).reshape(g, 3, 3)
    out["pbc"] = np.array([np.asarray(r["pbc"], dtype=np.uint8) for r in graphs]).reshape(g, 3)
    out["energy"] = np.array([r["energy"] for r in graphs], dtype=np.float64)
    out["eref"] = np.array([r["eref"] for r in graphs], dtype=np.float64)
    out["stress"] = np.array(
        [r["stress"] if r.get("stress") is not None else np.full((3, 3), np.nan) for r in graphs],
        dtype=np.float64,
    ).reshape(g, 3, 3)
    out["sid"] = np.array([r["sid"] for r in graphs], dtype=np.int64)
    out["has_forces"] = np.array([r.get("forces") is not None for r in graphs], dtype=np.uint8)
    out["has_stress"] = np.array([r.get("stress") is not None for r in graphs], dtype=np.uint8)
    out["charge"] = np.array([r.get("charge", 0) for r in graphs], dtype=np.int64)
    out["spin"] = np.array([r.get("spin", 0) for r in graphs], dtype=np.int64)
    return out


def _tmp_dir_beside(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move directory ``tmp`` to ``final``, replacing an existing ``final`` with no moment where neither exists."""
    from models.appio import replace_dir

    replace_dir(tmp, final)


def _file_sizes(bp: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(bp.iterdir()) if p.is_file()}


def write_shard(
    path: str | Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
) -> dict[str, Any]:
    """Write one ADIOS2 shard atomically (temporary directory, then rename).

    Args:
        path: Target ``*.bp`` directory.
        arrays: Output of :func:`pack_graphs` (at least one graph).
        meta: Store attributes (JSON-serialisable), saved as the ``meta`` attribute.

    Returns:
        The shard's index entry: file name, graph/atom/edge counts, file sizes.
    """
    path = Path(path)
    num_graphs = int(arrays["natoms"].shape[0])
    if num_graphs == 0:
        raise ValueError(f"{path}: refusing to write an empty shard")
    tmp = _tmp_dir_beside(path)
    bp = tmp / "data.bp"
    shapes = {name: list(arrays[name].shape) for name in ALL_VARS}
    full_meta = {**meta, "schema_version": SCHEMA_VERSION, "shapes": shapes}
    try:
        with adios2.Stream(str(bp), "w") as s:
            s.begin_step()
            for name in ALL_VARS:
                a = np.ascontiguousarray(arrays[name])
                if a.size == 0:
                    continue
                s.write(name, a, list(a.shape), [0] * a.ndim, list(a.shape))
            s.write_attribute("meta", json.dumps(full_meta, sort_keys=True))
            s.write_attribute("schema_version", SCHEMA_VERSION)
            s.end_step()
        (bp / "profiling.json").unlink(missing_ok=True)  # timings: would make identical runs differ
        for p in bp.iterdir():
            os.replace(p, tmp / p.name)
        bp.rmdir()
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "file": path.name,
        "num_graphs": num_graphs,
        "num_atoms": int(arrays["natoms"].sum()),
        "num_edges": int(arrays["nedges"].sum()),
        "files": _file_sizes(path),
    }


def write_index(split_dir: str | Path, shards: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> Path:
    """Write ``index.json`` of a split directory (atomically) listing ``shards`` in order."""
    split_dir = Path(split_dir)
    index = {
        "schema_version": SCHEMA_VERSION,
        "meta": dict(meta),
        "num_graphs": int(sum(s["num_graphs"] for s in shards)),
        "shards": [dict(s) for s in shards],
    }
    write_json_atomic(split_dir / INDEX_NAME, index)
    return split_dir / INDEX_NAME


def write_split(
    split_dir: str | Path,
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    shard_size: int = 1_000_000,
) -> dict[str, Any]:
    """Write a whole split (shards of at most ``shard_size`` graphs + index) atomically.

    The split is assembled in a temporary directory beside ``split_dir`` and renamed into place, so a reader
    never sees a half-written split. An empty split gets an index with no shards.

    Returns:
        The index as written.
    """
    split_dir = Path(split_dir)
    tmp = _tmp_dir_beside(split_dir)
    try:
        g = int(arrays["natoms"].shape[0])
        entries = []
        for k, lo in enumerate(range(0, g, shard_size)):
            hi = min(g, lo + shard_size)
            part = slice_arrays(arrays, lo, hi)
            entries.append(write_shard(tmp / f"shard-{k:05d}.bp", part, meta))
        write_index(tmp, entries, meta)
        _replace_dir(tmp, split_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return json.loads((split_dir / INDEX_NAME).read_text())


def split_energies(split_dir: str | Path, references: Mapping[int, float]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per shard of a split written by :func:`write_split` (index order): its graphs' energies [G] (eV) and
    energies per atom less the ``references`` (``{Z: eV}``) [G] (eV/atom), read one shard at a time — what the
    end-of-run statistics need, in memory bounded by the shard size whatever the split's.

    Raises:
        BadInput: Missing, truncated or corrupt store (the message names the file).
    """
    split_dir = Path(split_dir)
    index_path = split_dir / INDEX_NAME
    try:
        entries = json.loads(index_path.read_text())["shards"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"{index_path}: unreadable store index ({exc})") from exc
    for entry in entries:
        shard = ShardReader(split_dir / entry["file"], entry, ("energy",))
        try:
            natoms, energy = shard.graph["natoms"], shard.graph["energy"]
            eref = reference_sums(shard.read("z"), natoms, dict(references))
        finally:
            shard.close()
        yield energy, (energy - eref) / np.maximum(natoms, 1)


def slice_arrays(arrays: Mapping[str, np.ndarray], lo: int, hi: int) -> dict[str, np.ndarray]:
    """Graphs ``lo:hi`` of packed arrays, with offsets rebased to 0."""
    ao, eo = arrays["atom_offset"], arrays["edge_offset"]
    a0 = int(ao[lo]) if hi > lo else 0
    a1 = int(ao[hi - 1] + arrays["natoms"][hi - 1]) if hi > lo else 0
    e0 = int(eo[lo]) if hi > lo else 0
    e1 = int(eo[hi - 1] + arrays["nedges"][hi - 1]) if hi > lo else 0
    out = {n: arrays[n][a0:a1] for n in ATOM_VARS}
    out.update({n: arrays[n][e0:e1] for n in EDGE_VARS})
    out.update({n: arrays[n][lo:hi] for n in GRAPH_VARS})
    out["atom_offset"] = out["atom_offset"] - a0
    out["edge_offset"] = out["edge_offset"] - e0
    return out


# ----------------------------------------------------------------------------------------------- reading
def concat_ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for each (s, c), vectorised."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    rel = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return rel + np.repeat(starts, counts)


class ShardReader:
    """One open shard (BP file), checked against its index entry: the per-graph arrays ``graph_vars`` (and
    ``natoms``, ``nedges``) in memory (``graph``), everything else read on demand (:meth:`read`)."""

    def __init__(
        self, path: Path, entry: Mapping[str, Any] | None, graph_vars: Sequence[str] = GRAPH_VARS
    ) -> None:
        self.path = path
        if not path.is_dir():
            raise BadInput(f"{path}: shard missing")
        if entry is not None:
            for name, size in entry.get("files", {}).items():
                f = path / name
                if not f.is_file():
                    raise BadInput(f"{f}: file of the store is missing")
                if f.stat().st_size != size:
                    raise BadInput(
                        f"{f}: truncated or modified ({f.stat().st_size} bytes, index says {size})"
                    )
        try:
            self.reader = adios2.FileReader(str(path))
            raw = self.reader.read_attribute("meta")
            self.meta = json.loads(raw[0] if isinstance(raw, list) else raw)
            self.present = set(self.reader.available_variables())
        except Exception as exc:
            raise BadInput(
                f"{path}: corrupt or unreadable ADIOS2 store ({type(exc).__name__}: {exc})"
            ) from exc
        self.shapes = {k: tuple(v) for k, v in self.meta["shapes"].items()}
        self.graph = {n: self.read(n) for n in dict.fromkeys(("natoms", "nedges", *graph_vars))}
        g = self.shapes["natoms"][0]
        if self.shapes["z"][0] != int(self.graph["natoms"].sum()) or len(self.graph["natoms"]) != g:
            raise BadInput(f"{path}: inconsistent store: natoms do not add up to the atom count")
        if self.shapes["edges"][0] != int(self.graph["nedges"].sum()):
            raise BadInput(f"{path}: inconsistent store: nedges do not add up to the edge count")

    def read(self, name: str, lo: int | None = None, hi: int | None = None) -> np.ndarray:
        shape = self.shapes[name]
        if lo is None:
            lo, hi = 0, shape[0]
        assert hi is not None
        if hi <= lo or name not in self.present:
            return empty_array(name, (max(hi - lo, 0), *shape[1:]))
        try:
            a = self.reader.read(name, [lo] + [0] * (len(shape) - 1), [hi - lo, *shape[1:]])
        except Exception as exc:
            raise BadInput(
                f"{self.path}: cannot read variable {name!r} ({type(exc).__name__}: {exc})"
            ) from exc
        return a.reshape((hi - lo, *shape[1:]))

    def close(self) -> None:
        self.reader.close()


#: dtype of each variable that is not float64 (to re-create zero-sized ones, which ADIOS2 cannot store).
DTYPES = {"z": np.int64, "edges": np.int32, "shift": np.int32, "pbc": np.uint8, "has_forces": np.uint8,
           "has_stress": np.uint8, "natoms": np.int64, "nedges": np.int64, "atom_offset": np.int64,
           "edge_offset": np.int64, "sid": np.int64, "charge": np.int64, "spin": np.int64}  # fmt: skip


def empty_array(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Zeros of variable ``name``'s dtype."""
    return np.zeros(shape, dtype=DTYPES.get(name, np.float64))


