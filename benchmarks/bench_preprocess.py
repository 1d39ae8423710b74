"""Preprocessing throughput: our vesin radius graph (with the max-neighbour cap) vs ASE's neighbor_list.

Same structures (demo metals: bulk alloys, slabs, clusters), same cutoff and cap, interleaved repetitions,
medians. Prints as its last line a JSON object; ratio > 1 means ours is faster.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from ase.neighborlist import neighbor_list

from models.data.demo import metal_structure
from models.data.graphs import cap_neighbours, radius_graph_pbc
from models.data.split import structure_id


def ours(structs, cutoff, cap):
    for a in structs:
        radius_graph_pbc(a.positions, a.cell.array, a.pbc, cutoff, cap)
        structure_id(a.numbers, a.positions, a.cell.array, a.pbc)


def peer(structs, cutoff, cap):
    for a in structs:
        i, j, s, d = neighbor_list("ijSd", a, cutoff)
        i, j, s, d = cap_neighbours(i.astype(np.int64), j.astype(np.int64), s.astype(np.int32), d, cap)
        np.stack([j, i])
        structure_id(a.numbers, a.positions, a.cell.array, a.pbc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cutoff", type=float, default=5.0)
    ap.add_argument("--max-neighbours", type=int, default=32)
    args = ap.parse_args()
    n, reps = (60, 3) if args.quick else (300, 5)
    structs = [metal_structure(0, k) for k in range(n)]
    t_ours, t_peer = [], []
    for _ in range(reps):
        for fn, acc in ((ours, t_ours), (peer, t_peer)):
            t0 = time.perf_counter()
            fn(structs, args.cutoff, args.max_neighbours)
            acc.append(time.perf_counter() - t0)
    o, p = n / statistics.median(t_ours), n / statistics.median(t_peer)
    print(
        f"structures={n} atoms/structure={np.mean([len(a) for a in structs]):.1f} ours={o:.0f}/s ase={p:.0f}/s"
    )
    print(json.dumps({"benchmark": "preprocess_neighbour_list", "ours": round(o, 1), "peer": round(p, 1),
                      "peer_name": "ase.neighborlist.neighbor_list", "unit": "structures/s",
                      "ratio": round(o / p, 2), "structures": n, "repetitions": reps}))  # fmt: skip


if __name__ == "__main__":
    main()
