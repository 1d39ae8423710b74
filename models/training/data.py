"""Adapters from the ADIOS2 graph stores (:mod:`models.data`) to the training loop: opening splits, finding
which head a dataset feeds, and a deterministic sharded pass over evaluation splits."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch_geometric.data import Batch

from models import keys
from models.appio import BadInput


def open_stores(
    root: str | Path | Mapping[str, str], datasets: Sequence[str], split: str, dtype: torch.dtype = torch.float32,
    cache: bool = True,
) -> dict[str, Any]:
    """Open ``split`` of every dataset under ``root`` (one directory, or ``{dataset: directory}``) with float
    fields in ``dtype`` (``cache``: every atom and edge row in memory, else read on access or held per rank with
    ``GraphStore.retain``); a missing store is a :class:`BadInput` naming it."""
    from models.data.store import open_split

    stores: dict[str, Any] = {}
    for name in datasets:
        if isinstance(root, Mapping):
            if name not in root:
                raise BadInput(f"field 'data_root': no directory for dataset '{name}' (have {sorted(root)})")
            where: str | Path = root[name]
        else:
            where = root
        try:
            stores[name] = open_split(where, name, split, dtype=dtype, cache=cache)
        except (FileNotFoundError, KeyError, OSError) as exc:
            raise BadInput(f"{where}: dataset '{name}' split '{split}' cannot be opened ({exc})") from exc
    return stores


def dataset_head(store: Any, name: str, mapping: Mapping[str, int] | None = None) -> int:
    """The head a dataset feeds: ``mapping[name]``, else the store's ``head_id`` (when >= 0), else its first
    graph's ``head`` field."""
    if mapping and name in mapping:
        return int(mapping[name])
    value = getattr(store, "head_id", None)
    if isinstance(value, int) and value >= 0:
        return value
    if len(store) == 0:
        raise BadInput(f"dataset '{name}': empty store, cannot tell its head (give 'dataset_heads')")
    return int(store.get_batch([0])[keys.HEAD][0])


def eval_batches(
    stores: Mapping[str, Any], batch_size: int, *, rank: int = 0, world_size: int = 1
) -> Iterator[Batch]:
    """Every graph of every store exactly once over all ranks (rank ``r`` takes graphs ``r::world_size``),
    in batches of at most ``batch_size`` graphs, in a fixed order."""
    for name in sorted(stores):
        store = stores[name]
        mine = torch.arange(rank, len(store), world_size).tolist()
        for start in range(0, len(mine), batch_size):
            yield store.get_batch(mine[start : start + batch_size])
