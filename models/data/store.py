"""ADIOS2 graph store: concatenated arrays plus per-graph offsets, one directory per dataset split.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import adios2
import numpy as np
import torch
from torch_geometric.data import Batch, Data

from models import keys as K
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
#: Per-graph variables a store keeps for every graph (the layout that locates any graph's rows in the files, and
#: ``eref``, which is computed for deferred shards); the others (:data:`LABEL_VARS`) only for the graphs it holds
#: once :meth:`GraphStore.retain` gave it a share.
LAYOUT_VARS = ("natoms", "nedges", "atom_offset", "edge_offset", "eref")
LABEL_VARS = tuple(n for n in GRAPH_VARS if n not in LAYOUT_VARS)
_FLOAT_KEYS = (K.POS, K.CELL, K.SHIFT, K.ENERGY, K.EREF, K.FORCES, K.STRESS)


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
        shard = _Shard(split_dir / entry["file"], entry)
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
def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for each (s, c), vectorised."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    rel = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return rel + np.repeat(starts, counts)


class _Shard:
    """One open BP file: graph-level arrays in memory, atom/edge arrays read on demand."""

    def __init__(self, path: Path, entry: Mapping[str, Any] | None) -> None:
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
        self.graph = {n: self.read(n) for n in GRAPH_VARS}
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
            return _empty(name, (max(hi - lo, 0), *shape[1:]))
        try:
            a = self.reader.read(name, [lo] + [0] * (len(shape) - 1), [hi - lo, *shape[1:]])
        except Exception as exc:
            raise BadInput(
                f"{self.path}: cannot read variable {name!r} ({type(exc).__name__}: {exc})"
            ) from exc
        return a.reshape((hi - lo, *shape[1:]))

    def close(self) -> None:
        self.reader.close()


_DTYPES = {"z": np.int64, "edges": np.int32, "shift": np.int32, "pbc": np.uint8, "has_forces": np.uint8,
           "has_stress": np.uint8, "natoms": np.int64, "nedges": np.int64, "atom_offset": np.int64,
           "edge_offset": np.int64, "sid": np.int64, "charge": np.int64, "spin": np.int64}  # fmt: skip


def _empty(name: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.zeros(shape, dtype=_DTYPES.get(name, np.float64))


@dataclass(frozen=True)
class _Held:
    """The rows of the graphs a store holds in memory (:meth:`GraphStore.retain`).

    Attributes:
        graphs: [H] sorted global graph indices held.  atom_start / edge_start: [H] each one's first row in
        ``atoms`` / ``edges`` (the held rows, concatenated in graph order).  labels: the held graphs' rows of
        :data:`LABEL_VARS`, in ``graphs`` order.
    """

    graphs: np.ndarray
    atom_start: np.ndarray
    edge_start: np.ndarray
    atoms: dict[str, np.ndarray]
    edges: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]


class GraphStore:
    """Random and chunked access to one dataset split written by :func:`write_split`.

    Args:
        path: A split directory holding ``index.json`` (or a single shard ``*.bp`` directory).
        dtype: Floating dtype of the returned tensors (float64 is stored).
        cache: Load all arrays into memory once (fast; a store of the demo size takes a few MB). When False,
            per-atom/per-edge arrays are read from the files on each access.
        reference_energies: ``{Z: eV}`` used for shards whose ``eref`` is deferred (parts of a sharded
            preprocessing run); by default the merged index's fitted references. The index of a merged store
            may list shards of several part directories (relative paths): it is read as one store.

    Attributes:
        dataset: Registry name of the dataset.
        head_id: Its head id.
        attrs: Store attributes: units, reference_energies (``{Z: eV}``), cutoff, max_neighbours, …

    Raises:
        BadInput: Missing, truncated or corrupt store (the message names the file).
    """

    def __init__(
        self,
        path: str | Path,
        dtype: torch.dtype = torch.float32,
        cache: bool = True,
        reference_energies: Mapping[int, float] | None = None,
    ) -> None:
        self.path = Path(path)
        self.dtype = dtype
        self.cache = cache
        index_path = self.path / INDEX_NAME
        if index_path.is_file():
            try:
                index = json.loads(index_path.read_text())
                entries = index["shards"]
                meta = dict(index["meta"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise BadInput(f"{index_path}: unreadable store index ({exc})") from exc
            self._shards = [_Shard(self.path / e["file"], e) for e in entries]
        elif (self.path / "md.idx").is_file():
            self._shards = [_Shard(self.path, None)]
            meta = dict(self._shards[0].meta)
        else:
            raise BadInput(f"{self.path}: not a graph store (no {INDEX_NAME})")
        meta.pop("shapes", None)
        self.attrs: dict[str, Any] = meta
        self.dataset: str = str(meta.get("dataset", ""))
        self.head_id: int = int(meta.get("head_id", -1))
        self._fill_deferred_eref(index_path, reference_energies)
        counts = np.array([len(s.graph["natoms"]) for s in self._shards], dtype=np.int64)
        self._first = np.cumsum(counts) - counts  # first global graph index of each shard
        g = {n: _cat([s.graph[n] for s in self._shards], n) for n in GRAPH_VARS}
        g["atom_offset"] = np.cumsum(g["natoms"]) - g["natoms"]
        g["edge_offset"] = np.cumsum(g["nedges"]) - g["nedges"]
        self._g = g
        # the first global atom / edge row of each shard; the shards' own copies of the per-graph arrays go
        atoms_per = np.array([s.shapes["z"][0] for s in self._shards], dtype=np.int64)
        edges_per = np.array([s.shapes["edges"][0] for s in self._shards], dtype=np.int64)
        self._base = {"atom": np.cumsum(atoms_per) - atoms_per, "edge": np.cumsum(edges_per) - edges_per}
        for shard in self._shards:
            shard.graph = {}
        self._n = int(counts.sum())
        self._atoms: dict[str, np.ndarray] | None = None
        self._edges: dict[str, np.ndarray] | None = None
        self._held: _Held | None = None
        if cache:
            self._atoms = {n: _cat([s.read(n) for s in self._shards], n) for n in ATOM_VARS}
            self._edges = {n: _cat([s.read(n) for s in self._shards], n) for n in EDGE_VARS}
            for s in self._shards:
                s.close()

    def _fill_deferred_eref(self, index_path: Path, override: Mapping[int, float] | None) -> None:
        """Per-graph ``eref`` of shards written by one part of a sharded preprocessing run.

        Such shards store NaN (the references are fitted over all parts only afterwards); the merged index
        carries the fitted ``reference_energies``, from which ``eref`` [G] is summed per graph here.
        """
        deferred = [s for s in self._shards if s.meta.get("eref_deferred")]
        if not deferred:
            return
        if override is not None:
            refs = {int(k): float(v) for k, v in override.items()}
        elif self.attrs.get("eref_from_index"):
            refs = {int(k): float(v) for k, v in self.attrs.get("reference_energies", {}).items()}
        else:
            raise BadInput(
                f"{index_path}: this is one part of a sharded preprocessing run; its reference energies are"
                " fitted over all parts: open the merged store"
            )
        for s in deferred:
            s.graph["eref"] = reference_sums(s.read("z"), s.graph["natoms"], refs)

    @property
    def reference_energies(self) -> dict[int, float]:
        """Fitted element reference energies ``{Z: eV}``."""
        return {int(k): float(v) for k, v in self.attrs.get("reference_energies", {}).items()}

    @property
    def natoms(self) -> np.ndarray:
        """[G] atoms per graph (int64)."""
        return self._g["natoms"]

    def graph_values(self, name: str) -> np.ndarray:
        """Per-graph array ``name`` (one of ``GRAPH_VARS``, e.g. ``energy`` [G] eV, ``sid`` [G]) in store order
        (read from the files when the store holds a share)."""
        if name not in GRAPH_VARS:
            raise KeyError(f"{name!r} is not a per-graph variable ({', '.join(GRAPH_VARS)})")
        if name in self._g:
            return self._g[name]
        return self._labels(np.arange(self._n))[name]

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"GraphStore({str(self.path)!r}, dataset={self.dataset!r}, graphs={self._n})"

    # -- holding a share in memory ------------------------------------------------------------------------
    def retain(self, indices: Sequence[int] | np.ndarray) -> None:
        """Hold in memory the rows of the graphs ``indices`` only (a rank's share), read from the files once (the
        store must be opened with ``cache=False``). Gathers of held graphs are served from memory, others are read
        from the files. Of the per-graph arrays only :data:`LAYOUT_VARS` (40 bytes a graph: what locates any
        graph in the files) stay for every graph; the labels (:data:`LABEL_VARS`: energies, cells, stresses,
        ids, …) are kept for the share only.

        The memory this holds is the share's: ``sum(natoms[indices])`` atom rows, ``sum(nedges[indices])`` edge
        rows and ``len(indices)`` label rows (see :meth:`share_bytes`, :meth:`held_bytes`).
        """
        if self.cache:
            raise ValueError(f"{self!r} holds every graph (cache=True): open it with cache=False to hold a share")
        idx = np.unique(np.asarray(indices, dtype=np.int64).reshape(-1))
        if idx.size and (idx[0] < 0 or idx[-1] >= self._n):
            raise IndexError(f"graph index out of range for {self!r}")
        labels = self._labels(idx)
        self._held = None
        atoms = self._gather_rows(ATOM_VARS, "atom", idx)
        edges = self._gather_rows(EDGE_VARS, "edge", idx)
        self._atoms = self._edges = None
        self._g = {n: self._g[n] for n in LAYOUT_VARS}
        na, ne = self._g["natoms"][idx], self._g["nedges"][idx]
        self._held = _Held(idx, np.cumsum(na) - na, np.cumsum(ne) - ne, atoms, edges, labels)

    def share_bytes(self, indices: Sequence[int] | np.ndarray) -> int:
        """Bytes :meth:`retain` of ``indices`` would hold (their atom and edge rows), known without reading them."""
        idx = np.unique(np.asarray(indices, dtype=np.int64).reshape(-1))
        shapes = self._shards[0].shapes

        def row_bytes(name: str) -> int:
            return int(np.prod(shapes[name][1:], dtype=np.int64)) * np.dtype(_DTYPES.get(name, np.float64)).itemsize

        atoms, edges = int(self._g["natoms"][idx].sum()), int(self._g["nedges"][idx].sum())
        return (atoms * sum(row_bytes(n) for n in ATOM_VARS) + edges * sum(row_bytes(n) for n in EDGE_VARS)
                + idx.size * sum(row_bytes(n) for n in LABEL_VARS))

    def held_bytes(self) -> int:
        """Bytes of data this store holds in memory: atom and edge rows (all of them with ``cache=True``, the
        share's after :meth:`retain`) and per-graph rows."""
        parts = ([self._held.atoms, self._held.edges, self._held.labels] if self._held is not None
                 else [d for d in (self._atoms, self._edges) if d is not None])
        return int(sum(a.nbytes for d in [*parts, self._g] for a in d.values()))

    def _held_positions(self, idx: np.ndarray) -> np.ndarray | None:
        """[I] where the graphs ``idx`` are among the held ones, or None unless all of them are held."""
        held = self._held
        if held is None or not idx.size:
            return None
        pos = np.searchsorted(held.graphs, idx)
        inside = np.minimum(pos, held.graphs.size - 1)
        return pos if np.all(pos < held.graphs.size) and np.array_equal(held.graphs[inside], idx) else None

    def _labels(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """The :data:`LABEL_VARS` rows of the graphs ``idx`` [I], in that order: from memory when held, else
        read from the files (one read per variable and run of consecutive graphs within a shard)."""
        if LABEL_VARS[0] in self._g:
            return {n: self._g[n][idx] for n in LABEL_VARS}
        pos = self._held_positions(idx)
        if pos is not None:
            assert self._held is not None
            return {n: a[pos] for n, a in self._held.labels.items()}
        parts: dict[str, list[np.ndarray]] = {n: [] for n in LABEL_VARS}
        for k, run in self._file_runs(idx):
            lo = int(idx[run[0]] - self._first[k])
            for n in LABEL_VARS:
                parts[n].append(self._shards[k].read(n, lo, lo + run.size))
        return {n: _cat(parts[n], n) for n in LABEL_VARS}

    def _file_runs(self, idx: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """``(shard, positions in idx)`` per run of consecutive graphs of ``idx`` within one shard: what one read
        from the files serves."""
        shard_of = np.searchsorted(self._first, idx, side="right") - 1
        breaks = np.flatnonzero((np.diff(idx) != 1) | (np.diff(shard_of) != 0)) + 1
        for run in np.split(np.arange(idx.size), breaks):
            if run.size:
                yield int(shard_of[run[0]]), run

    # -- raw gathering ------------------------------------------------------------------------------------
    def _gather_rows(self, names: Sequence[str], kind: str, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Atom (kind='atom') or edge rows of the graphs ``idx``, concatenated in order."""
        count = self._g["natoms" if kind == "atom" else "nedges"][idx]
        start = self._g["atom_offset" if kind == "atom" else "edge_offset"][idx]
        cached = self._atoms if kind == "atom" else self._edges
        pos = self._held_positions(idx) if cached is None else None
        if pos is not None:
            assert self._held is not None
            cached = self._held.atoms if kind == "atom" else self._held.edges
            start = (self._held.atom_start if kind == "atom" else self._held.edge_start)[pos]
        if cached is not None:
            if idx.size and np.all(np.diff(start) == count[:-1]):  # consecutive rows: one slice
                lo, hi = int(start[0]), int(start[-1] + count[-1])
                return {n: cached[n][lo:hi] for n in names}
            sel = _ranges(start, count)
            return {n: cached[n][sel] for n in names}
        # from the files: one read per run of consecutive graphs within a shard
        parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for k, run in self._file_runs(idx):
            lo = int(start[run[0]] - self._base[kind][k])
            hi = lo + int(count[run].sum())
            for n in names:
                parts[n].append(self._shards[k].read(n, lo, hi))
        return {n: _cat(parts[n], n) for n in names}

    def gather(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Numpy arrays of the graphs ``indices`` laid out as one batch (edge indices offset per batch).

        Returns:
            Arrays keyed as :mod:`models.keys` (plus ``charge``, ``spin``), float64, and ``batch`` [N].
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self._n):
            raise IndexError(f"graph index out of range for {self!r}")
        natoms = self._g["natoms"][idx]
        nedges = self._g["nedges"][idx]
        g = self._labels(idx)
        atoms = self._gather_rows(ATOM_VARS, "atom", idx)
        edges = self._gather_rows(EDGE_VARS, "edge", idx)
        new_off = np.cumsum(natoms) - natoms
        ei = edges["edges"].T.astype(np.int64) + np.repeat(new_off, nedges)
        return {
            K.Z: atoms["z"],
            K.POS: atoms["pos"],
            K.FORCES: atoms["forces"],
            K.EDGE_INDEX: ei,
            K.SHIFT: edges["shift"],
            K.CELL: g["cell"],
            K.PBC: g["pbc"].astype(bool),
            K.ENERGY: g["energy"],
            K.EREF: self._g["eref"][idx],
            K.STRESS: g["stress"],
            K.SID: g["sid"],
            K.HAS_FORCES: g["has_forces"].astype(bool),
            K.HAS_STRESS: g["has_stress"].astype(bool),
            K.CHARGE: g["charge"],
            K.SPIN: g["spin"],
            K.NATOMS: natoms,
            K.HEAD: np.full(idx.size, self.head_id, dtype=np.int64),
            K.BATCH: np.repeat(np.arange(idx.size, dtype=np.int64), natoms),
        }

    def _tensors(self, arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = {}
        for k, a in arrays.items():
            t = torch.from_numpy(np.array(a, copy=True) if not a.flags.owndata else a)
            if k in _FLOAT_KEYS:
                t = t.to(self.dtype)
            out[k] = t
        return out

    # -- public access ------------------------------------------------------------------------------------
    def __getitem__(self, i: int) -> Data:
        """Graph ``i`` as a ``Data`` with the keys of :mod:`models.keys` (graph-level fields have a leading
        dimension of 1, so ``Batch.from_data_list`` gives the same layout as :meth:`get_batch`)."""
        i = int(i)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"graph {i} out of range for {self!r}")
        t = self._tensors(self.gather([i]))
        t.pop(K.BATCH)
        return Data(**t)

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> Batch:
        """The graphs ``indices`` as one PyG ``Batch``, built directly from the concatenated arrays.

        Returns:
            A Batch with ``z``, ``pos``, ``cell`` [G,3,3], ``pbc`` [G,3], ``edge_index`` (offset per batch),
            ``shift``, ``energy``, ``eref``, ``forces``, ``stress``, ``head``, ``natoms``, ``batch``, ``ptr``,
            ``sid``, ``has_forces``, ``has_stress``, ``charge``, ``spin``.
        """
        return make_batch(self._tensors(self.gather(indices)))

    def get_chunk(self, start: int, stop: int) -> Batch:
        """Contiguous graphs ``start:stop`` (the fastest read)."""
        return self.get_batch(np.arange(start, min(stop, self._n)))


def _cat(parts: Sequence[np.ndarray], name: str) -> np.ndarray:
    if len(parts) == 0:
        return _empty(name, (0,))
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts)


def make_batch(t: dict[str, torch.Tensor]) -> Batch:
    """Wrap batch tensors (as from :meth:`GraphStore.gather`, as tensors) in a PyG ``Batch`` with ``ptr``."""
    natoms = t[K.NATOMS]
    ptr = torch.zeros(natoms.numel() + 1, dtype=torch.long)
    torch.cumsum(natoms, 0, out=ptr[1:])
    b = Batch(**t, ptr=ptr)
    b._num_graphs = int(natoms.numel())
    return b


def open_split(
    root: str | Path, dataset: str, split: str, dtype: torch.dtype = torch.float32, cache: bool = True
) -> GraphStore:
    """Open ``<root>/<dataset>/<split>`` (split is ``train``, ``val`` or ``test``)."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, not {split!r}")
    return GraphStore(Path(root) / dataset / split, dtype=dtype, cache=cache)
