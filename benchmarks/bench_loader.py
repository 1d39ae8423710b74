"""Loader throughput: our ADIOS2 GraphStore (cached, vectorised get_batch) vs one pickle per PyG ``Data``.

The peer is HydraGNN's other path: every graph pickled to its own file, read back and collated with
``Batch.from_data_list``. Both hold the same graphs (demo metals, radius graph 5 Å, cap 32). Random access:
batches of 32 random indices. Sequential: contiguous batches of 256 over the whole store (ours on one core).
Interleaved repetitions, medians. Last line: JSON; ratio = random-access ratio (> 1: ours faster).
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch

from models.data.demo import metal_structure
from models.data.graphs import radius_graph_pbc
from models.data.shards import pack_graphs, write_split
from models.data.store import GraphStore


def build(root: Path, n: int) -> GraphStore:
    recs = []
    for k in range(n):
        a = metal_structure(1, k)
        ei, sh, _ = radius_graph_pbc(a.positions, a.cell.array, a.pbc, 5.0, 32)
        recs.append({"z": a.numbers, "pos": a.positions, "forces": np.zeros((len(a), 3)), "cell": a.cell.array,
                     "pbc": a.pbc, "energy": -float(k), "eref": 0.0, "stress": None, "sid": k,
                     "edge_index": ei, "shift": sh})  # fmt: skip
    write_split(root / "store", pack_graphs(recs), {"dataset": "bench", "head_id": 0})
    store = GraphStore(root / "store", dtype=torch.float32)
    pk = root / "pickles"
    pk.mkdir()
    for i in range(n):
        with open(pk / f"{i}.pkl", "wb") as fh:
            pickle.dump(store[i], fh)
    return store


def peer_batch(root: Path, idx) -> Batch:
    data = []
    for i in idx:
        with open(root / "pickles" / f"{int(i)}.pkl", "rb") as fh:
            data.append(pickle.load(fh))
    return Batch.from_data_list(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n, reps, nbatch = (400, 3, 20) if args.quick else (3000, 5, 100)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = build(root, n)
        rng = np.random.default_rng(0)
        batches = [rng.integers(0, n, 32) for _ in range(nbatch)]
        r_ours, r_peer, s_ours, s_peer = [], [], [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            for b in batches:
                store.get_batch(b)
            r_ours.append(nbatch * 32 / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for b in batches:
                peer_batch(root, b)
            r_peer.append(nbatch * 32 / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for lo in range(0, n, 256):
                store.get_chunk(lo, lo + 256)
            s_ours.append(n / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for lo in range(0, n, 256):
                peer_batch(root, range(lo, min(n, lo + 256)))
            s_peer.append(n / (time.perf_counter() - t0))
    ro, rp, so, sp = (statistics.median(x) for x in (r_ours, r_peer, s_ours, s_peer))
    print(
        f"graphs={n} random: ours={ro:.0f}/s pickle={rp:.0f}/s; sequential: ours={so:.0f}/s pickle={sp:.0f}/s"
    )
    print(json.dumps({"benchmark": "loader_random_access", "ours": round(ro), "peer": round(rp),
                      "peer_name": "pickle-per-graph + Batch.from_data_list", "unit": "graphs/s",
                      "ratio": round(ro / rp, 2), "sequential_ours": round(so), "sequential_peer": round(sp),
                      "sequential_ratio": round(so / sp, 2), "graphs": n, "repetitions": reps}))  # fmt: skip


if __name__ == "__main__":
    main()
