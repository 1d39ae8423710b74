"""Random and chunked access to a graph store (:mod:`models.data.shards`) as PyG batches: :class:`GraphStore`.

Opened with ``cache=True`` a store holds every array of every graph. Opened from its files (``cache=False``) it
holds nothing per graph: the shards' graph counts (from ``index.json``) locate any graph, and its layout, labels,
atom and edge rows are read from the files on demand, or held for a share once :meth:`GraphStore.retain` gave
it one — a rank's memory is its share's, whatever the size of the dataset.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from models import keys as K
from models.appio import BadInput
from models.data.reference import reference_sums
from models.data.shards import (
    ATOM_VARS,
    DTYPES,
    EDGE_VARS,
    GRAPH_VARS,
    INDEX_NAME,
    ShardReader,
    concat_ranges,
    empty_array,
)

#: Per-graph variables that locate a graph's atom and edge rows (offsets are global rows of the store), and
#: ``eref`` (summed from the references for deferred shards); the others are :data:`LABEL_VARS`.
LAYOUT_VARS = ("natoms", "nedges", "atom_offset", "edge_offset", "eref")
LABEL_VARS = tuple(n for n in GRAPH_VARS if n not in LAYOUT_VARS)
_FLOAT_KEYS = (K.POS, K.CELL, K.SHIFT, K.ENERGY, K.EREF, K.FORCES, K.STRESS)


@dataclass(frozen=True)
class _Held:
    """The rows of the graphs a store holds in memory (:meth:`GraphStore.retain`).

    Attributes:
        graphs: [H] sorted global graph indices held.  atom_start / edge_start: [H] each one's first row in
        ``atoms`` / ``edges`` (the held rows, concatenated in graph order).  layout / labels: the held graphs'
        rows of :data:`LAYOUT_VARS` / :data:`LABEL_VARS`, in ``graphs`` order.
    """

    graphs: np.ndarray
    atom_start: np.ndarray
    edge_start: np.ndarray
    atoms: dict[str, np.ndarray]
    edges: dict[str, np.ndarray]
    layout: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]


class GraphStore:
    """Random and chunked access to one dataset split written by :func:`models.data.shards.write_split`.

    Args:
        path: A split directory holding ``index.json`` (or a single shard ``*.bp`` directory).
        dtype: Floating dtype of the returned tensors (float64 is stored).
        cache: Load all arrays into memory once (fast; a store of the demo size takes a few MB). When False,
            only the layout (:data:`LAYOUT_VARS`, 40 bytes a graph) is read at open; atom, edge and label rows
            are read from the files on each access, or held for a share (:meth:`retain`).
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
        graph_vars = GRAPH_VARS if cache else ()  # opened from its files: nothing per graph is kept
        if index_path.is_file():
            try:
                index = json.loads(index_path.read_text())
                entries = index["shards"]
                meta = dict(index["meta"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise BadInput(f"{index_path}: unreadable store index ({exc})") from exc
            self._shards = [ShardReader(self.path / e["file"], e, graph_vars) for e in entries]
        elif (self.path / "md.idx").is_file():
            self._shards = [ShardReader(self.path, None, graph_vars)]
            meta = dict(self._shards[0].meta)
        else:
            raise BadInput(f"{self.path}: not a graph store (no {INDEX_NAME})")
        meta.pop("shapes", None)
        self.attrs: dict[str, Any] = meta
        self.dataset: str = str(meta.get("dataset", ""))
        self.head_id: int = int(meta.get("head_id", -1))
        self._refs = self._deferred_references(index_path, reference_energies)
        counts = np.array([s.shapes["natoms"][0] for s in self._shards], dtype=np.int64)
        self._first = np.cumsum(counts) - counts  # first global graph index of each shard
        # the first global atom / edge row of each shard
        atoms_per = np.array([s.shapes["z"][0] for s in self._shards], dtype=np.int64)
        edges_per = np.array([s.shapes["edges"][0] for s in self._shards], dtype=np.int64)
        self._base = {"atom": np.cumsum(atoms_per) - atoms_per, "edge": np.cumsum(edges_per) - edges_per}
        self._n = int(counts.sum())
        self._g: dict[str, np.ndarray] = {}  # every graph's per-graph rows (cache=True only)
        if cache:
            for k, shard in enumerate(self._shards):
                if self._refs is not None:
                    na, ao = shard.graph["natoms"], shard.graph["atom_offset"]
                    shard.graph["eref"] = self._shard_eref(k, 0, len(na), na, ao)
            g = {n: _cat([s.graph[n] for s in self._shards], n) for n in GRAPH_VARS}
            g["atom_offset"] = np.cumsum(g["natoms"]) - g["natoms"]
            g["edge_offset"] = np.cumsum(g["nedges"]) - g["nedges"]
            self._g = g
        for shard in self._shards:  # the shards' own copies of the per-graph arrays go
            shard.graph = {}
        self._atoms: dict[str, np.ndarray] | None = None
        self._edges: dict[str, np.ndarray] | None = None
        self._held: _Held | None = None
        if cache:
            self._atoms = {n: _cat([s.read(n) for s in self._shards], n) for n in ATOM_VARS}
            self._edges = {n: _cat([s.read(n) for s in self._shards], n) for n in EDGE_VARS}
            for s in self._shards:
                s.close()

    def _deferred_references(
        self, index_path: Path, override: Mapping[int, float] | None
    ) -> dict[int, float] | None:
        """The references ``{Z: eV}`` from which the ``eref`` of deferred shards is summed, or None when no shard
        is deferred.

        Shards written by one part of a sharded preprocessing run (and by a streaming run) store NaN: the
        references are fitted only afterwards; the (merged) index carries them.
        """
        if not any(s.meta.get("eref_deferred") for s in self._shards):
            return None
        if override is not None:
            return {int(k): float(v) for k, v in override.items()}
        if self.attrs.get("eref_from_index"):
            return {int(k): float(v) for k, v in self.attrs.get("reference_energies", {}).items()}
        raise BadInput(
            f"{index_path}: this is one part of a sharded preprocessing run; its reference energies are"
            " fitted over all parts: open the merged store"
        )

    def _shard_eref(self, k: int, lo: int, hi: int, natoms: np.ndarray, atom_offset: np.ndarray) -> np.ndarray:
        """[hi - lo] ``eref`` (eV) of graphs ``lo:hi`` of shard ``k`` (their atom counts and shard-local first
        atom rows: ``natoms``, ``atom_offset``)."""
        shard = self._shards[k]
        if self._refs is None or not shard.meta.get("eref_deferred"):
            return shard.read("eref", lo, hi)
        a0 = int(atom_offset[0]) if hi > lo else 0
        return reference_sums(shard.read("z", a0, a0 + int(natoms.sum())), natoms, self._refs)

    @property
    def reference_energies(self) -> dict[int, float]:
        """Fitted element reference energies ``{Z: eV}``."""
        return {int(k): float(v) for k, v in self.attrs.get("reference_energies", {}).items()}

    @property
    def natoms(self) -> np.ndarray:
        """[G] atoms per graph (int64; read from the files when the store was opened from them)."""
        return self.graph_values("natoms")

    def graph_values(self, name: str) -> np.ndarray:
        """Per-graph array ``name`` (one of ``GRAPH_VARS``, e.g. ``energy`` [G] eV, ``sid`` [G]) in store order
        (read from the files when the store was opened from them)."""
        if name not in GRAPH_VARS:
            raise KeyError(f"{name!r} is not a per-graph variable ({', '.join(GRAPH_VARS)})")
        if name in self._g:
            return self._g[name]
        every = np.arange(self._n)
        return (self._layout(every) if name in LAYOUT_VARS else self._labels(every))[name]

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"GraphStore({str(self.path)!r}, dataset={self.dataset!r}, graphs={self._n})"

    # -- holding a share in memory ------------------------------------------------------------------------
    def retain(self, indices: Sequence[int] | np.ndarray) -> None:
        """Hold in memory the rows of the graphs ``indices`` only (a rank's share), read from the files once (the
        store must be opened with ``cache=False``). Gathers of held graphs are served from memory, others are read
        from the files (nothing is kept for them).

        The memory this holds is the share's: ``sum(natoms[indices])`` atom rows, ``sum(nedges[indices])`` edge
        rows and ``len(indices)`` per-graph rows (see :meth:`share_bytes`, :meth:`held_bytes`).
        """
        if self.cache:
            raise ValueError(f"{self!r} holds every graph (cache=True): open it with cache=False to hold a share")
        idx = np.unique(np.asarray(indices, dtype=np.int64).reshape(-1))
        if idx.size and (idx[0] < 0 or idx[-1] >= self._n):
            raise IndexError(f"graph index out of range for {self!r}")
        self._held = None
        layout = self._layout(idx)
        labels = self._labels(idx)
        atoms = self._gather_rows(ATOM_VARS, "atom", idx, layout)
        edges = self._gather_rows(EDGE_VARS, "edge", idx, layout)
        na, ne = layout["natoms"], layout["nedges"]
        self._held = _Held(idx, np.cumsum(na) - na, np.cumsum(ne) - ne, atoms, edges, layout, labels)

    def share_bytes(self, indices: Sequence[int] | np.ndarray) -> int:
        """Bytes :meth:`retain` of ``indices`` would hold (their atom and edge rows), known without reading them."""
        idx = np.unique(np.asarray(indices, dtype=np.int64).reshape(-1))
        shapes = self._shards[0].shapes

        def row_bytes(name: str) -> int:
            return int(np.prod(shapes[name][1:], dtype=np.int64)) * np.dtype(DTYPES.get(name, np.float64)).itemsize

        layout = self._layout(idx)
        atoms, edges = int(layout["natoms"].sum()), int(layout["nedges"].sum())
        return (atoms * sum(row_bytes(n) for n in ATOM_VARS) + edges * sum(row_bytes(n) for n in EDGE_VARS)
                + idx.size * sum(row_bytes(n) for n in GRAPH_VARS))

    def held_bytes(self) -> int:
        """Bytes of data this store holds in memory: atom and edge rows (all of them with ``cache=True``, the
        share's after :meth:`retain`) and per-graph rows."""
        parts = ([self._held.atoms, self._held.edges, self._held.layout, self._held.labels]
                 if self._held is not None else [d for d in (self._atoms, self._edges) if d is not None])
        return int(sum(a.nbytes for d in [*parts, self._g] for a in d.values()))

    def _held_positions(self, idx: np.ndarray) -> np.ndarray | None:
        """[I] where the graphs ``idx`` are among the held ones, or None unless all of them are held."""
        held = self._held
        if held is None or not idx.size:
            return None
        pos = np.searchsorted(held.graphs, idx)
        inside = np.minimum(pos, held.graphs.size - 1)
        return pos if np.all(pos < held.graphs.size) and np.array_equal(held.graphs[inside], idx) else None

    def _layout(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """The :data:`LAYOUT_VARS` rows of the graphs ``idx`` [I], in that order (offsets as global rows): from
        memory when held, else read from the files (one read per variable and run of consecutive graphs)."""
        if self._g:
            return {n: self._g[n][idx] for n in LAYOUT_VARS}
        pos = self._held_positions(idx)
        if pos is not None:
            assert self._held is not None
            return {n: a[pos] for n, a in self._held.layout.items()}
        parts: dict[str, list[np.ndarray]] = {n: [] for n in LAYOUT_VARS}
        for k, run in self._file_runs(idx):
            shard = self._shards[k]
            lo = int(idx[run[0]] - self._first[k])
            hi = lo + run.size
            natoms, atom_offset = shard.read("natoms", lo, hi), shard.read("atom_offset", lo, hi)
            parts["natoms"].append(natoms)
            parts["nedges"].append(shard.read("nedges", lo, hi))
            parts["atom_offset"].append(atom_offset + self._base["atom"][k])
            parts["edge_offset"].append(shard.read("edge_offset", lo, hi) + self._base["edge"][k])
            parts["eref"].append(self._shard_eref(k, lo, hi, natoms, atom_offset))
        return {n: _cat(parts[n], n) for n in LAYOUT_VARS}

    def _labels(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """The :data:`LABEL_VARS` rows of the graphs ``idx`` [I], in that order: from memory when held, else
        read from the files (one read per variable and run of consecutive graphs within a shard)."""
        if self._g:
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
    def _gather_rows(
        self, names: Sequence[str], kind: str, idx: np.ndarray, layout: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Atom (kind='atom') or edge rows of the graphs ``idx`` (whose :meth:`_layout` is ``layout``),
        concatenated in order."""
        count = layout["natoms" if kind == "atom" else "nedges"]
        start = layout["atom_offset" if kind == "atom" else "edge_offset"]
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
            sel = concat_ranges(start, count)
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
        layout = self._layout(idx)
        natoms, nedges = layout["natoms"], layout["nedges"]
        g = self._labels(idx)
        atoms = self._gather_rows(ATOM_VARS, "atom", idx, layout)
        edges = self._gather_rows(EDGE_VARS, "edge", idx, layout)
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
            K.EREF: layout["eref"],
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
        return empty_array(name, (0,))
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
