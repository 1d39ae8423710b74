"""Data wait during training: the fraction of step time spent blocked waiting for the next batch.

The demo PaiNN (hidden 32, 3 layers, 16 RBF, 5 Å: the largest PaiNN of ``recipes/hpo.yaml``'s search space)
is trained by our :class:`models.training.loop.Trainer` (forces, multi-task loss, AdamW, clipping; fp32, one
thread) on two imbalanced datasets: EMT-labelled demo metals (bulk alloys, slabs, clusters: ``metal_structure``)
and EMT-labelled rattled small molecules, temperature sampling (T = 2), 16 graphs per batch.

* ours: batches from :class:`models.data.loader.MultiDatasetLoader` over the two ADIOS2 stores read from their
  files on every batch (``data_in_memory: none``, the path of a store larger than a rank's memory), built ahead
  by its prefetch thread; ``ours_held``: the same over the stores held in memory (``share`` / ``all``).
* peer: the same batches (same graph indices, same order) from a one-pickle-per-graph store of PyG ``Data``
  objects collated with ``Batch.from_data_list`` (HydraGNN's other path, as in ``bench_loader.py``).

Both sides feed the trainer through an iterator that times each ``next()`` (the time the step is blocked
waiting for data); the fraction is that time over the whole training pass. Both passes run the same number of
steps from the same initial weights, twice each, interleaved (ours, peer, ours, peer); the medians are reported.
Last line: JSON with ours / peer = data-wait fractions (%), ratio = peer / ours (> 1: we wait less).
Goal (issue 3): ours < 5 %.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase.build import molecule
from ase.calculators.emt import EMT
from torch_geometric.data import Batch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.data.demo import metal_structure
from models.data.graphs import radius_graph_pbc
from models.data.loader import MultiDatasetLoader
from models.data.shards import pack_graphs, write_split
from models.data.store import GraphStore

HIDDEN, LAYERS, RBF, CUTOFF, MAX_NEIGHBOURS = 32, 3, 16, 5.0, 32
BATCH_GRAPHS = 16
MOLECULES = ("H2O", "CH4", "NH3", "C2H4", "CH3OH", "HCN", "C2H6", "H2CO")
HEADS = {"metals": 100, "molecules": 101}


def _record(atoms: Any, sid: int) -> dict[str, Any]:
    atoms.calc = EMT()
    periodic = bool(atoms.pbc.any())
    cell = np.asarray(atoms.cell[:]) if periodic else np.zeros((3, 3))
    ei, shift, _ = radius_graph_pbc(atoms.positions, cell, atoms.pbc, CUTOFF, MAX_NEIGHBOURS)
    return {"z": atoms.numbers, "pos": atoms.positions, "forces": atoms.get_forces(), "cell": cell,
            "pbc": atoms.pbc, "energy": float(atoms.get_potential_energy()), "eref": 0.0, "stress": None,
            "sid": sid, "edge_index": ei, "shift": shift}  # fmt: skip


def build_stores(root: Path, n_metals: int, n_molecules: int) -> list[GraphStore]:
    """Write the two datasets as ADIOS2 stores and as one pickle per graph; return the opened stores."""
    rng = np.random.default_rng(0)
    mols = []
    for k in range(n_molecules):
        atoms = molecule(MOLECULES[k % len(MOLECULES)])
        atoms.rattle(stdev=0.05, seed=int(rng.integers(1 << 31)))
        mols.append(_record(atoms, k))
    metals = [_record(metal_structure(2, k), k) for k in range(n_metals)]
    stores = []
    for name, recs in (("metals", metals), ("molecules", mols)):
        write_split(root / name, pack_graphs(recs), {"dataset": name, "head_id": HEADS[name]})
        store = GraphStore(root / name, dtype=torch.float32)
        pk = root / f"{name}-pickles"
        pk.mkdir()
        for i in range(len(store)):
            with open(pk / f"{i}.pkl", "wb") as fh:
                pickle.dump(store[i], fh)
        stores.append(store)
    return stores


class PickleLoader:
    """The peer: the loader's plan, each graph read from its own pickle and collated by ``from_data_list``."""

    def __init__(self, plan: list[tuple[np.ndarray, np.ndarray]], dirs: list[Path]) -> None:
        self.plan = plan
        self.dirs = dirs

    def __iter__(self) -> Iterator[Batch]:
        for ds, ix in self.plan:
            data = []
            for d, i in zip(ds, ix, strict=True):
                with open(self.dirs[int(d)] / f"{int(i)}.pkl", "rb") as fh:
                    data.append(pickle.load(fh))
            yield Batch.from_data_list(data)


class TimedBatches:
    """Wraps a batch iterable; ``wait`` accumulates the seconds spent inside ``next()``."""

    def __init__(self, batches: Iterable[Batch]) -> None:
        self.it = iter(batches)
        self.wait = 0.0

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        t0 = time.perf_counter()
        try:
            return next(self.it)
        finally:
            self.wait += time.perf_counter() - t0


def make_trainer() -> Any:
    from models.distributed import GradSync
    from models.nn.loss import multitask_loss
    from models.nn.model import build_model
    from models.training.loop import Trainer
    from models.training.schedule import Schedule

    torch.manual_seed(0)
    model = build_model({"family": "painn", "hidden": HIDDEN, "layers": LAYERS, "cutoff": CUTOFF,
                         "num_rbf": RBF, "heads": sorted(HEADS.values())})  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return Trainer(model, optimizer=opt, schedule=Schedule(opt, {"kind": "constant"}, 1), sync=GradSync(model),
                   loss_fn=multitask_loss, device=torch.device("cpu"), precision="fp32", force_weight=10.0,
                   grad_clip=10.0)  # fmt: skip


def train(loader_factory: Any, steps: int) -> tuple[float, float, float]:
    """Train ``steps`` steps on fresh batches; return (data-wait fraction, wait s, total s)."""
    trainer = make_trainer()
    batches = TimedBatches(loader_factory())
    t0 = time.perf_counter()
    result = trainer.train_epoch(batches, steps)
    total = time.perf_counter() - t0
    if not np.isfinite(result.loss):
        raise RuntimeError("training diverged")
    return batches.wait / total, batches.wait, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer graphs and steps (a smoke run)")
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    n_metals, n_molecules, steps = (240, 60, 40) if args.quick else (2400, 600, 300)
    steps = args.steps or steps
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        held = build_stores(root, n_metals, n_molecules)
        files = [GraphStore(s.path, dtype=torch.float32, cache=False) for s in held]
        epoch = steps * BATCH_GRAPHS

        def ours(stores: list[GraphStore]) -> Any:
            return lambda: MultiDatasetLoader(stores, BATCH_GRAPHS, sampling="temperature", temperature=2.0,
                                              epoch_size=epoch, seed=0)  # fmt: skip

        plan = ours(held)()._plan(0)
        dirs = [root / "metals-pickles", root / "molecules-pickles"]
        runs: dict[str, list[tuple[float, float, float]]] = {"ours": [], "ours_held": [], "peer": []}
        for _ in range(2):
            runs["ours"].append(train(ours(files), steps))
            runs["ours_held"].append(train(ours(held), steps))
            runs["peer"].append(train(lambda: PickleLoader(plan, dirs), steps))
    frac = {k: statistics.median(r[0] for r in v) * 100 for k, v in runs.items()}
    step_ms = {k: statistics.median(r[2] for r in v) / steps * 1e3 for k, v in runs.items()}
    wait_ms = {k: statistics.median(r[1] for r in v) / steps * 1e3 for k, v in runs.items()}
    print(
        f"steps={steps} batch={BATCH_GRAPHS} graphs: ours (from the files) wait {wait_ms['ours']:.2f} ms of "
        f"{step_ms['ours']:.1f} ms per step ({frac['ours']:.2f} %); held in memory {wait_ms['ours_held']:.2f} ms of "
        f"{step_ms['ours_held']:.1f} ms ({frac['ours_held']:.2f} %); pickle wait {wait_ms['peer']:.2f} ms of {step_ms['peer']:.1f} ms"
        f" ({frac['peer']:.2f} %)"
    )
    print(json.dumps({"benchmark": "data_wait_fraction", "ours": round(frac["ours"], 3),
                      "peer": round(frac["peer"], 3), "peer_name": "pickle-per-graph + Batch.from_data_list",
                      "unit": "% of step time waiting for data", "ratio": round(frac["peer"] / frac["ours"], 2),
                      "goal_ours_below": 5.0, "ours_held_fraction": round(frac["ours_held"], 3),
                      "ours_wait_ms_per_step": round(wait_ms["ours"], 3),
                      "peer_wait_ms_per_step": round(wait_ms["peer"], 3),
                      "ours_step_ms": round(step_ms["ours"], 2), "peer_step_ms": round(step_ms["peer"], 2),
                      "steps": steps, "batch_graphs": BATCH_GRAPHS, "model": f"painn h{HIDDEN} l{LAYERS}",
                      "threads": 1, "repetitions": 2}))  # fmt: skip


if __name__ == "__main__":
    main()
