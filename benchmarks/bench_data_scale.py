"""Training data held per rank against the number of ranks: each rank's share (``data_in_memory: share``, ours)
against every rank holding every graph (``all``, the cache-everything path it replaces), on the same store.

One store of ``--graphs`` EMT-labelled cells and molecules (``bench_train``'s: 2x2x2 fcc cells of 32 atoms and
small molecules, graphs within 5 Å) with a validation split of a quarter that size; ``models.train`` for one
epoch on 1, 2, 4 and 8 ranks (``--ranks``; torchrun, gloo, CPU, one thread each, PaiNN 32 x 2). The figures,
per run: ``data_bytes`` (the atom, edge and per-graph rows the rank holding the most keeps in memory: the data part of its
memory), the rank's peak resident memory (``peak_memory_bytes``, whole process) and the training throughput.
(The data wait of reading from the stores is ``bench_data_wait.py``'s.)

``ours`` = share's data bytes per rank at the most ranks, ``peer`` = all's, ``ratio`` = peer / ours (> 1: a rank
holds less). Goal: at 8 ranks the share holds <= 1/5 of the 1-rank figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_train  # its EMT-labelled demo stores

REPO = Path(__file__).resolve().parent.parent


def run(root: Path, ranks: int, mode: str, out: Path) -> dict[str, Any]:
    cfg = {"data_root": str(root), "datasets": ["bench"], "dataset_heads": {"bench": 0}, "batch_size": 8,
           "epochs": 1, "precision": "fp32", "device": "cpu", "threads": 1, "data_in_memory": mode,
           "model": {"family": "painn", "hidden": 32, "layers": 2, "cutoff": bench_train.CUTOFF, "heads": [0]},
           "output_dir": str(out / "run"), "seed": 0}
    res = bench_train.torchrun_train(cfg, ranks, out)
    return {"data_bytes": res["data_bytes"], "peak_memory_bytes": res["peak_memory_bytes"],
            "wall_time_s": res["wall_time_s"], "train_graphs_per_s": res["train_graphs_per_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graphs", type=int, default=800)
    ap.add_argument("--ranks", default="1,2,4,8")
    args = ap.parse_args()
    figures: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "stores"
        bench_train.write_demo_store(root, args.graphs, seed=0, name="bench", head_id=0, split="train")
        bench_train.write_demo_store(root, max(8, args.graphs // 4), seed=1, name="bench", head_id=0, split="val")
        for ranks in (int(x) for x in args.ranks.split(",")):
            row = {mode: run(root, ranks, mode, Path(tmp) / f"{mode}{ranks}") for mode in ("all", "share")}
            figures[str(ranks)] = row
            a, s = row["all"], row["share"]
            print(f"{ranks} ranks: data held per rank {a['data_bytes'] / 2**20:.2f} MiB (all) vs "
                  f"{s['data_bytes'] / 2**20:.2f} MiB (share); peak RSS {a['peak_memory_bytes'] / 2**20:.0f} vs "
                  f"{s['peak_memory_bytes'] / 2**20:.0f} MiB; {a['train_graphs_per_s']:.1f} vs "
                  f"{s['train_graphs_per_s']:.1f} graphs/s", file=sys.stderr, flush=True)
    most = figures[max(figures, key=int)]
    one = figures[min(figures, key=int)]
    ours, peer = most["share"]["data_bytes"], most["all"]["data_bytes"]
    print(json.dumps({"benchmark": "training_data_bytes_per_rank", "ours": ours, "peer": peer,
                      "unit": "bytes of atom, edge and per-graph rows held by the largest rank", "ratio": peer / ours,
                      "share_vs_one_rank": ours / one["share"]["data_bytes"], "graphs": args.graphs,
                      "runs": figures, "goal": "share at 8 ranks <= 1/5 of the 1-rank figure"}))


if __name__ == "__main__":
    main()
