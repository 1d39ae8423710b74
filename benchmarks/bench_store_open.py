"""Memory of one rank opening a store of many small graphs: its share from the files vs the whole store cached.

A store of ``--graphs`` water molecules (3 atoms, 6 edges: the per-graph rows dominate, as in SPICE, QCML or
OMol25) is written in shards of 100,000 graphs. Ours: ``GraphStore(cache=False)`` then ``retain`` of one rank's
share of ``--ranks`` (what ``data_in_memory: share`` does). Peer: ``GraphStore(cache=True)``, the
cache-everything path every rank used before. Each runs in its own process; the figure is the growth of its
peak resident memory (``VmHWM``) over its resident memory before opening the store (the interpreter and its
imports, the same in both, are subtracted).

Prints both, and as its last line a JSON object whose ``ratio`` is the peer's growth over ours (> 1: we hold less).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

OPEN = textwrap.dedent("""
    import json, sys
    import numpy as np
    from models.data.store import GraphStore

    def status_mib(field):  # this process's own figures (ru_maxrss would count the parent's memory at fork)
        line = next(ln for ln in open("/proc/self/status") if ln.startswith(field + ":"))
        return int(line.split()[1]) / 1024

    path, mode, ranks = sys.argv[1], sys.argv[2], int(sys.argv[3])
    before = status_mib("VmRSS")
    store = GraphStore(path, cache=mode == "all")
    if mode == "share":
        m = -(-len(store) // ranks)
        store.retain(np.arange(0, m))
    batch = store.get_batch(np.arange(0, 64))  # the store serves batches
    peak = status_mib("VmHWM")
    print(json.dumps({"growth_mib": peak - before, "held_mib": store.held_bytes() / 2**20,
                      "graphs": len(store), "batch_graphs": int(batch.num_graphs)}))
""")


def write_store(split_dir: Path, graphs: int) -> None:
    """``graphs`` rattled water molecules, shards of 100,000 graphs."""
    from models.data.shards import write_split

    rng = np.random.default_rng(0)
    natoms = np.full(graphs, 3, dtype=np.int64)
    nedges = np.full(graphs, 6, dtype=np.int64)
    water = np.array([[0.0, 0.0, 0.119], [0.0, 0.763, -0.477], [0.0, -0.763, -0.477]])
    arrays = {
        "natoms": natoms, "nedges": nedges,
        "atom_offset": np.cumsum(natoms) - natoms, "edge_offset": np.cumsum(nedges) - nedges,
        "z": np.tile([8, 1, 1], graphs).astype(np.int64),
        "pos": np.tile(water, (graphs, 1)) + rng.normal(scale=0.02, size=(3 * graphs, 3)),
        "forces": rng.normal(size=(3 * graphs, 3)),
        "edges": np.tile([[1, 0], [2, 0], [0, 1], [2, 1], [0, 2], [1, 2]], (graphs, 1)).astype(np.int32),
        "shift": np.zeros((6 * graphs, 3), dtype=np.int32),
        "cell": np.zeros((graphs, 3, 3)), "pbc": np.zeros((graphs, 3), dtype=np.uint8),
        "energy": rng.normal(-2080.0, 0.1, size=graphs), "eref": np.full(graphs, -2080.0),
        "stress": np.full((graphs, 3, 3), np.nan), "sid": np.arange(graphs, dtype=np.int64),
        "has_forces": np.ones(graphs, dtype=np.uint8), "has_stress": np.zeros(graphs, dtype=np.uint8),
        "charge": np.zeros(graphs, dtype=np.int64), "spin": np.zeros(graphs, dtype=np.int64),
    }  # fmt: skip
    write_split(split_dir, arrays, {"dataset": "water", "head_id": 0}, shard_size=100_000)


def measure(split_dir: Path, mode: str, ranks: int, script: Path) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(script), str(split_dir), mode, str(ranks)], env=env, cwd=REPO,
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--graphs", type=int, default=2_000_000)
    ap.add_argument("--ranks", type=int, default=8, help="the share is 1/ranks of the store")
    ap.add_argument("--quick", action="store_true", help="200,000 graphs")
    args = ap.parse_args()
    graphs = 200_000 if args.quick else args.graphs
    with tempfile.TemporaryDirectory(prefix="bench-store-open-") as tmp:
        split_dir = Path(tmp) / "water" / "train"
        write_store(split_dir, graphs)
        script = Path(tmp) / "open.py"
        script.write_text(OPEN)
        ours = measure(split_dir, "share", args.ranks, script)
        peer = measure(split_dir, "all", args.ranks, script)
    print(f"{graphs:,} graphs, share of 1/{args.ranks}: ours (files + share) +{ours['growth_mib']:.0f} MiB peak "
          f"({ours['held_mib']:.1f} MiB held) | peer (cache everything) +{peer['growth_mib']:.0f} MiB peak "
          f"({peer['held_mib']:.1f} MiB held)")  # fmt: skip
    print(json.dumps({"benchmark": "store_open_memory", "ours": round(ours["growth_mib"], 1),
                      "peer": round(peer["growth_mib"], 1), "unit": "MiB of peak memory growth, one rank",
                      "ratio": round(peer["growth_mib"] / ours["growth_mib"], 2), "graphs": graphs,
                      "ranks": args.ranks, "ours_held_mib": round(ours["held_mib"], 1),
                      "peer_held_mib": round(peer["held_mib"], 1)}))  # fmt: skip


if __name__ == "__main__":
    main()
