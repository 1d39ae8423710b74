"""Parameter and optimizer-state memory per rank against the number of heads, with and without multi-task
parallelism (head groups), measured on real multi-rank training runs.

For H = 2, 4 (``--heads``): H datasets of EMT-labelled cells and molecules (one head each, 2x2x2 fcc cells
and small molecules from ``bench_train``), ``models.train`` on H
ranks (torchrun, gloo, CPU, one epoch, PaiNN hidden 64 x 2 layers, heads of width ``--head-hidden``), once with
``head_groups: false`` (every rank trains every head: AdamW moments for all of them) and once with ``true``
(one rank per head: moments for the encoder and its own head). The figure is the training result's
``state_bytes`` of the rank holding the most. ``ours`` = grouped bytes per rank at the largest H, ``peer`` = the
same without groups, ``ratio`` = peer / ours (> 1: head groups hold less).
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


def write_stores(root: Path, heads: int, graphs: int = 16) -> list[str]:
    """``heads`` datasets ``d0 … d{H-1}`` of EMT-labelled cells and molecules (``bench_train``'s), with train and
    val splits; the head id of ``d<h>`` is ``h``."""
    for h in range(heads):
        bench_train.write_demo_store(root, graphs, seed=h, name=f"d{h}", head_id=h, split="train")
        bench_train.write_demo_store(root, 4, seed=100 + h, name=f"d{h}", head_id=h, split="val")
    return [f"d{h}" for h in range(heads)]


def run(root: Path, names: list[str], grouped: bool, head_hidden: int, out: Path) -> dict[str, Any]:
    cfg = {"data_root": str(root), "datasets": names, "dataset_heads": {n: k for k, n in enumerate(names)},
           "batch_size": 4, "epochs": 1, "precision": "fp32", "device": "cpu", "threads": 1, "head_groups": grouped,
           "model": {"family": "painn", "hidden": 64, "layers": 2, "cutoff": bench_train.CUTOFF,
                     "heads": list(range(len(names))),
                     "head_hidden": head_hidden},
           "output_dir": str(out / "run"), "seed": 0}
    res = bench_train.torchrun_train(cfg, len(names), out)
    return {**res["state_bytes"], "n_params": res["n_params"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", default="2,4")
    ap.add_argument("--head-hidden", type=int, default=256)
    args = ap.parse_args()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for h in (int(x) for x in args.heads.split(",")):
            root = Path(tmp) / f"h{h}"
            names = write_stores(root / "stores", h)
            row = {}
            for grouped in (False, True):
                row["grouped" if grouped else "all_heads"] = run(root / "stores", names, grouped, args.head_hidden,
                                                               root / ("g" if grouped else "a"))
            figures[str(h)] = row
            a, g = row["all_heads"], row["grouped"]
            print(f"{h} heads on {h} ranks: parameters {a['parameters'] / 2**20:.2f} MiB per rank; optimizer "
                  f"state {a['optimizer'] / 2**20:.2f} MiB without head groups, {g['optimizer'] / 2**20:.2f} MiB "
                  f"with; total {a['total'] / 2**20:.2f} vs {g['total'] / 2**20:.2f} MiB", flush=True)
    last = figures[max(figures, key=int)]
    ours, peer = last["grouped"]["total"], last["all_heads"]["total"]
    print(json.dumps({"benchmark": "head_group_state_bytes_per_rank", "ours": ours, "peer": peer,
                      "unit": "bytes of parameters + optimizer state on the largest rank", "ratio": peer / ours,
                      "heads": figures, "model": f"painn hidden=64 layers=2, head_hidden={args.head_hidden}, fp32"}))


if __name__ == "__main__":
    main()
