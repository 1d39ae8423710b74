"""Multi-dataset batch loader with imbalance-aware sampling, per-rank sharding and mid-epoch resume.

Sampling of datasets (``n_d`` = graphs of dataset d):

* ``proportional``: every graph once per epoch (``p_d ∝ n_d``); with ``epoch_size`` the same weights are used
  to draw that many graphs.
* ``uniform``: ``p_d = 1/D`` (small datasets are cycled, large ones sub-sampled).
* ``temperature``: ``p_d ∝ n_d^(1/T)`` (T=1 proportional, T→∞ uniform).

Rank ``r`` of ``W`` only touches its contiguous shard of each dataset (``ceil(n_d/W)`` graphs, wrapping around
so every rank has the same count, as ``torch.utils.data.DistributedSampler`` pads). Every rank yields the same
number of batches, so DDP ranks never wait on each other. The plan of an epoch is a pure function of
(seed, epoch, rank), so :meth:`MultiDatasetLoader.state_dict` only needs the epoch and the batch position.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Batch

from models import keys as K
from models.data.prefetch import Prefetched
from models.data.store import GraphStore, make_batch

SAMPLINGS = ("proportional", "uniform", "temperature")


def dataset_weights(sizes: Sequence[int], sampling: str, temperature: float = 1.0) -> np.ndarray:
    """Sampling probability of each dataset.

    Args:
        sizes: Graphs per dataset.
        sampling: ``proportional``, ``uniform`` or ``temperature``.
        temperature: T of ``p_d ∝ n_d^(1/T)``.

    Returns:
        [D] probabilities summing to 1 (0 for empty datasets).
    """
    n = np.asarray(sizes, dtype=np.float64)
    if sampling == "proportional":
        w = n.copy()
    elif sampling == "uniform":
        w = (n > 0).astype(np.float64)
    elif sampling == "temperature":
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        w = np.where(n > 0, n ** (1.0 / temperature), 0.0)
    else:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, not {sampling!r}")
    if w.sum() <= 0:
        raise ValueError("all datasets are empty")
    return w / w.sum()


def _allocate(total: int, p: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``total`` closest to ``total * p`` (largest remainders)."""
    raw = total * p
    counts = np.floor(raw).astype(np.int64)
    rest = total - int(counts.sum())
    if rest > 0:
        order = np.argsort(-(raw - counts), kind="stable")
        counts[order[:rest]] += 1
    return counts


class MultiDatasetLoader:
    """Iterate mixed-dataset batches over several :class:`GraphStore` s.

    Args:
        stores: One store per dataset (each carries its head id).
        batch_size: Graphs per batch.
        sampling: ``proportional`` | ``uniform`` | ``temperature``.
        temperature: T for ``temperature`` sampling.
        shuffle: Shuffle the epoch (otherwise datasets and graphs come in order: sequential reads).
        drop_last: Drop the last incomplete batch.
        rank: This process's rank.
        world_size: Number of ranks.
        seed: Base seed of every random choice.
        epoch_size: Graphs per epoch over all ranks (default: the total number of graphs).
        weights: [D] explicit sampling probabilities (replaces ``sampling``'s; normalised here): a fine-tuning
            that replays a share of the pre-training data sets them.
        prefetch: Batches built ahead by a background thread while the caller trains on the current one (0: built
            on demand). Reading a batch from the stores' files costs a few ms a step; built ahead, the step does
            not wait for it. Positions, resume and errors are the caller's: a batch counts as yielded when the
            caller receives it.
    """

    def __init__(
        self,
        stores: Sequence[GraphStore],
        batch_size: int,
        *,
        sampling: str = "proportional",
        temperature: float = 1.0,
        shuffle: bool = True,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epoch_size: int | None = None,
        weights: Sequence[float] | None = None,
        prefetch: int = 2,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if not stores:
            raise ValueError("no stores given")
        self.stores = list(stores)
        self.batch_size = batch_size
        self.sampling = sampling
        self.temperature = temperature
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.prefetch = max(0, int(prefetch))
        self.sizes = np.array([len(s) for s in self.stores], dtype=np.int64)
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != self.sizes.shape or (w < 0).any() or w.sum() <= 0 or (w[self.sizes == 0] > 0).any():
                raise ValueError(f"weights must be one non-negative number per non-empty dataset, got {list(w)}")
            self.weights = w / w.sum()
        else:
            self.weights = dataset_weights(self.sizes, sampling, temperature)
        # this rank's shard of each dataset: ceil(n/W) indices starting at rank*ceil(n/W), wrapping
        self.shard_sizes = np.array([math.ceil(n / world_size) for n in self.sizes], dtype=np.int64)
        total = int(self.sizes.sum()) if epoch_size is None else int(epoch_size)
        self.epoch_size = total
        per_rank = math.ceil(total / world_size)
        if sampling == "proportional" and epoch_size is None and weights is None:
            self.counts = self.shard_sizes.copy()  # every graph of the shard exactly once
        else:
            self.counts = _allocate(per_rank, self.weights)
        self.samples_per_rank = int(self.counts.sum())
        self.epoch = 0
        self._pos = 0  # batches of the current epoch already yielded

    # -- plan ---------------------------------------------------------------------------------------------
    def shard_indices(self, d: int) -> np.ndarray:
        """[m] the graphs of dataset ``d`` this rank's epochs draw from (every epoch, any sampling)."""
        n, m = int(self.sizes[d]), int(self.shard_sizes[d])
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        return (self.rank * m + np.arange(m, dtype=np.int64)) % n

    def _plan(self, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The epoch's batches as (dataset ids, graph indices) pairs."""
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        ds_parts, ix_parts = [], []
        for d, c in enumerate(self.counts):
            c = int(c)
            if c == 0:
                continue
            local = self.shard_indices(d)
            reps = math.ceil(c / local.size)
            if self.shuffle:
                picks = np.concatenate([rng.permutation(local) for _ in range(reps)])[:c]
            else:
                picks = np.tile(local, reps)[:c]
            ds_parts.append(np.full(c, d, dtype=np.int64))
            ix_parts.append(picks)
        ds = np.concatenate(ds_parts)
        ix = np.concatenate(ix_parts)
        if self.shuffle:
            order = rng.permutation(ds.size)
            ds, ix = ds[order], ix[order]
        nb = len(self)
        return [
            (
                ds[b * self.batch_size : (b + 1) * self.batch_size],
                ix[b * self.batch_size : (b + 1) * self.batch_size],
            )
            for b in range(nb)
        ]

    def _make(self, ds: np.ndarray, ix: np.ndarray) -> Batch:
        parts = []
        for d in np.unique(ds):
            sel = ix[ds == d]
            if not self.shuffle:
                sel = np.sort(sel)
            parts.append(self.stores[int(d)].gather(sel))
        if len(parts) == 1:
            arrays = parts[0]
        else:
            arrays = concat_gathered(parts)
        dtype = self.stores[0].dtype
        return make_batch(self.stores[0]._tensors(arrays) if len(parts) == 1 else _to_tensors(arrays, dtype))

    # -- public API ---------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (its shuffling). A different epoch restarts at its first batch; the current one
        (e.g. after :meth:`load_state_dict`) keeps its position so a resumed run continues mid-epoch."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self._pos = 0

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        n = self.samples_per_rank
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        plan = self._plan(self.epoch)
        built = (self._make(ds, ix) for ds, ix in plan[self._pos:])
        with Prefetched(built, self.prefetch) if self.prefetch else nullcontext(built) as batches:
            for batch in batches:
                self._pos += 1
                yield batch
        self._pos = 0
        self.epoch += 1

    def state_dict(self) -> dict[str, Any]:
        """Where this loader stands: epoch, batches already yielded in it, and its configuration."""
        return {
            "epoch": self.epoch,
            "position": self._pos,
            "seed": self.seed,
            "sampling": self.sampling,
            "batch_size": self.batch_size,
            "rank": self.rank,
            "world_size": self.world_size,
            "sizes": self.sizes.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration continues the saved epoch after its last yielded batch.

        Raises:
            ValueError: The state came from a loader with different datasets, batch size or sampling.
        """
        for key in ("seed", "sampling", "batch_size", "world_size"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"loader state has {key}={state.get(key)!r}, this loader {getattr(self, key)!r}"
                )
        if list(state.get("sizes", [])) != self.sizes.tolist():
            raise ValueError("loader state was saved for datasets of different sizes")
        self.epoch = int(state["epoch"])
        self._pos = int(state["position"])


def concat_gathered(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate several :meth:`GraphStore.gather` outputs into one batch (re-offsetting edges/batch)."""
    atom_off = np.cumsum([0] + [p[K.Z].shape[0] for p in parts[:-1]])
    graph_off = np.cumsum([0] + [p[K.NATOMS].shape[0] for p in parts[:-1]])
    out: dict[str, np.ndarray] = {}
    for k in parts[0]:
        if k == K.EDGE_INDEX:
            out[k] = np.concatenate([p[k] + o for p, o in zip(parts, atom_off, strict=True)], axis=1)
        elif k == K.BATCH:
            out[k] = np.concatenate([p[k] + o for p, o in zip(parts, graph_off, strict=True)])
        else:
            out[k] = np.concatenate([p[k] for p in parts])
    return out


def _to_tensors(arrays: dict[str, np.ndarray], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    floats = (K.POS, K.CELL, K.SHIFT, K.ENERGY, K.EREF, K.FORCES, K.STRESS)
    return {
        k: torch.from_numpy(a).to(dtype) if k in floats else torch.from_numpy(a) for k, a in arrays.items()
    }
