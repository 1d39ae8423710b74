"""Parameter and optimizer-state memory per rank against the number of heads, with and without multi-task
parallelism (head groups), measured on real multi-rank training runs.

For H = 2, 4 (``--heads``): H datasets of EMT-labelled cells and molecules (one head each), ``models.train`` on H
ranks (torchrun, gloo, CPU, one epoch, PaiNN hidden 64 x 2 layers, heads of width ``--head-hidden``), once with
``head_groups: false`` (every rank trains every head: AdamW moments for all of them) and once with ``true``
(one rank per head: moments for the encoder and its own head). The figure is the training result's
``state_bytes`` of the rank holding the most. ``ours`` = grouped bytes per rank at the largest H, ``peer`` = the
same without groups, ``ratio`` = peer / ours (> 1: head groups hold less).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def write_stores(root: Path, heads: int, graphs: int = 16) -> list[str]:
    """``heads`` datasets ``d0 … d{H-1}``, each with train/val splits, head id = its index."""
    from ase.build import bulk, molecule
    from ase.calculators.emt import EMT

    from models.data.graphs import radius_graph_pbc
    from models.data.store import pack_graphs, write_split

    names = []
    for h in range(heads):
        rng = np.random.default_rng(h)
        for split, n in (("train", graphs), ("val", 4)):
            recs = []
            for k in range(n):
                if k % 2 == 0:
                    atoms = bulk("Cu", "fcc", a=3.61 * rng.uniform(0.98, 1.02), cubic=True)
                else:
                    atoms = molecule(["H2O", "CH4", "NH3"][k % 3])
                atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
                atoms.calc = EMT()
                cell = np.asarray(atoms.cell[:]) if atoms.pbc.any() else np.zeros((3, 3))
                ei, shift, _ = radius_graph_pbc(atoms.positions, cell, atoms.pbc, 4.0)
                recs.append({"z": atoms.numbers, "pos": atoms.positions, "forces": atoms.get_forces(), "cell": cell,
                             "pbc": atoms.pbc, "energy": float(atoms.get_potential_energy()), "eref": 0.0,
                             "stress": None, "sid": k, "edge_index": ei, "shift": shift})
            write_split(root / f"d{h}" / split, pack_graphs(recs), {"dataset": f"d{h}", "head_id": h})
        names.append(f"d{h}")
    return names


def run(root: Path, names: list[str], grouped: bool, head_hidden: int, out: Path) -> dict[str, Any]:
    cfg = {"data_root": str(root), "datasets": names, "dataset_heads": {n: k for k, n in enumerate(names)},
           "batch_size": 4, "epochs": 1, "precision": "fp32", "device": "cpu", "threads": 1, "head_groups": grouped,
           "model": {"family": "painn", "hidden": 64, "layers": 2, "cutoff": 4.0, "heads": list(range(len(names))),
                     "head_hidden": head_hidden},
           "output_dir": str(out / "run"), "seed": 0}
    out.mkdir(parents=True, exist_ok=True)
    (out / "cfg.json").write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={len(names)}",
           "-m", "models.train", "--config", str(out / "cfg.json"), "--result", str(out / "result.json")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    res = json.loads((out / "result.json").read_text())
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
