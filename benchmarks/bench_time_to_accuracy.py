"""Time to accuracy: our PaiNN against schnetpack's PaiNN, same sizes, same data, same loss, same wall-clock
budget each; the figure is the force error each reaches on a held-out test set.

* data: small closed-shell molecules of the G2 set (2-12 atoms), rattled and stretched, labelled by GFN2-xTB
  (tblite) — the demo-gfn2 generator (:func:`models.data.demo.generate`); ``--train`` for training, ``--test``
  held out. Energies are shifted by per-element reference energies fitted by least squares on every structure
  (a linear offset, the same for both models, so that both learn the same residual); graphs within 5 Å built once, shared by both;
* models: PaiNN, 64 features, 3 layers, 20 radial functions, 5 Å cosine cutoff, fp32, one thread (ours with
  ``--radial-basis``: the schema's default ``bessel``, or ``gaussian`` like the peer's); ours is
  :class:`models.training.loop.Trainer` (AdamW, gradient clipping 10, constant learning rate), the peer is
  schnetpack 2's ``NeuralNetworkPotential`` (PaiNN + Atomwise + Forces) in a plain loop with the same optimizer;
* loss: MSE of the energy per atom + 10 MSE of the force components, batches of 16 molecules, the same batch
  order for both (a seeded shuffle per epoch);
* budget: ``--budget-s`` seconds of training each (the clock is read between steps), then the test set's force
  MAE (meV/Å) and energy MAE (meV/atom).

``ratio`` = the peer's test force MAE / ours (> 1: ours is more accurate for the same time). Goal >= 1.3.
Needs the ``bench`` extra (schnetpack) and tblite.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_train  # schnetpack's import shim, its PaiNN and the conversion of our batches

from models import keys

HIDDEN, LAYERS, RBF, CUTOFF, LR, FORCE_WEIGHT, BATCH = 64, 3, 20, 5.0, 1e-3, 10.0, 16


def molecules(n: int, seed: int = 7) -> list[Any]:
    """``n`` GFN2-xTB-labelled molecules of the demo-gfn2 generator."""
    from models.data.demo import generate

    return list(generate("xtb", seed, 0, n, method="GFN2-xTB"))


def fit_references(atoms: list[Any]) -> dict[int, float]:
    """Per-element energies (eV) by least squares on ``atoms``' total energies."""
    elements = sorted({int(z) for a in atoms for z in a.numbers})
    counts = np.array([[int((a.numbers == z).sum()) for z in elements] for a in atoms], dtype=float)
    energies = np.array([a.get_potential_energy() for a in atoms])
    ref, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return dict(zip(elements, ref.tolist(), strict=True))


def write_store(root: Path, split: str, atoms: list[Any], refs: dict[int, float]) -> None:
    from models.data.graphs import radius_graph_pbc
    from models.data.shards import pack_graphs, write_split

    recs = []
    for k, a in enumerate(atoms):
        ei, shift, _ = radius_graph_pbc(a.positions, np.zeros((3, 3)), a.pbc, CUTOFF)
        shifted = a.get_potential_energy() - sum(refs[int(z)] for z in a.numbers)
        recs.append({"z": a.numbers, "pos": a.positions, "forces": a.get_forces(), "cell": np.zeros((3, 3)),
                     "pbc": a.pbc, "energy": float(shifted), "eref": 0.0, "stress": None, "sid": k,
                     "edge_index": ei, "shift": shift})
    write_split(root / "bench" / split, pack_graphs(recs), {"dataset": "bench", "head_id": 0})


def batches(root: Path, split: str, order: np.ndarray | None = None) -> Iterator[Any]:
    """Batches of ``split`` in ``order`` (all graphs in store order by default), read as they are used."""
    from models.data.store import open_split

    store = open_split(root, "bench", split, dtype=torch.float32)
    idx = np.arange(len(store)) if order is None else order
    for s in range(0, len(idx), BATCH):
        yield store.get_batch(idx[s:s + BATCH].tolist())


def epoch_orders(n: int, seed: int = 0) -> Iterator[np.ndarray]:
    """A seeded shuffle of ``n`` graphs per epoch, for ever (the same sequence for both models)."""
    rng = np.random.default_rng(seed)
    while True:
        yield rng.permutation(n)


# ------------------------------------------------------------------------------------------------ ours
def train_ours(root: Path, n_train: int, budget_s: float, radial_basis: str = "bessel") -> tuple[Any, int, float]:
    from models.distributed import GradSync
    from models.nn.loss import multitask_loss
    from models.nn.model import build_model
    from models.training.loop import Trainer
    from models.training.schedule import Schedule

    torch.manual_seed(0)
    model = build_model({"family": "painn", "hidden": HIDDEN, "layers": LAYERS, "cutoff": CUTOFF, "num_rbf": RBF,
                         "heads": [0], "radial_basis": radial_basis})
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    trainer = Trainer(model, optimizer=opt, schedule=Schedule(opt, {"kind": "constant"}, 1), sync=GradSync(model),
                      loss_fn=multitask_loss, device=torch.device("cpu"), precision="fp32",
                      force_weight=FORCE_WEIGHT, grad_clip=10.0)
    steps, t0 = 0, time.perf_counter()
    for order in epoch_orders(n_train):
        for b in batches(root, "train", order):
            if time.perf_counter() - t0 >= budget_s:
                return model, steps, time.perf_counter() - t0
            trainer.train_epoch([b], 1)
            steps += 1
    raise AssertionError("unreachable")


def test_errors_ours(model: Any, root: Path) -> tuple[float, float]:
    model.eval()
    f_err, e_err = [], []
    for b in batches(root, "test"):
        out = model(b.clone(), forces=True)
        f_err.append((out["forces"] - b[keys.FORCES]).abs().flatten())
        e_err.append(((out["energy"] - b[keys.ENERGY]) / b[keys.NATOMS]).abs())
    return float(torch.cat(f_err).mean()) * 1000, float(torch.cat(e_err).mean()) * 1000


# ------------------------------------------------------------------------------------------------ peer
def _peer_inputs(b: Any) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in bench_train.to_schnetpack(b).items()}


def train_peer(root: Path, n_train: int, budget_s: float) -> tuple[Any, int, float]:
    bench_train.HIDDEN, bench_train.LAYERS, bench_train.RBF, bench_train.CUTOFF = HIDDEN, LAYERS, RBF, CUTOFF
    model = bench_train.schnetpack_painn()  # seeded with 0 inside
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    n_atoms = bench_train._import_schnetpack().properties.n_atoms
    model.train()
    steps, t0 = 0, time.perf_counter()
    for order in epoch_orders(n_train):
        for b in batches(root, "train", order):
            if time.perf_counter() - t0 >= budget_s:
                return model, steps, time.perf_counter() - t0
            inputs = _peer_inputs(b)
            opt.zero_grad(set_to_none=True)
            out = model(dict(inputs))
            n = inputs[n_atoms].float()
            loss = ((((out["energy"] - inputs["energy_ref"]) / n) ** 2).mean()
                    + FORCE_WEIGHT * ((out["forces"] - inputs["forces_ref"]) ** 2).mean())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            steps += 1
    raise AssertionError("unreachable")


def test_errors_peer(model: Any, root: Path) -> tuple[float, float]:
    model.eval()
    n_atoms = bench_train._import_schnetpack().properties.n_atoms
    f_err, e_err = [], []
    for b in batches(root, "test"):
        inputs = _peer_inputs(b)
        out = model(dict(inputs))
        f_err.append((out["forces"].detach() - inputs["forces_ref"]).abs().flatten())
        e_err.append(((out["energy"].detach() - inputs["energy_ref"]) / inputs[n_atoms]).abs())
    return float(torch.cat(f_err).mean()) * 1000, float(torch.cat(e_err).mean()) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--budget-s", type=float, default=60.0)
    ap.add_argument("--radial-basis", choices=["bessel", "gaussian"], default="bessel")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    mols = molecules(args.train + args.test)
    label_s = time.perf_counter() - t0
    train, test = mols[: args.train], mols[args.train:]
    refs = fit_references(mols)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_store(root, "train", train, refs)
        write_store(root, "test", test, refs)
        ours, ours_steps, ours_s = train_ours(root, len(train), args.budget_s, args.radial_basis)
        ours_f, ours_e = test_errors_ours(ours, root)
        print(f"ours:       {ours_steps} steps in {ours_s:.1f} s ({1000 * ours_s / ours_steps:.1f} ms/step), "
              f"test force MAE {ours_f:.1f} meV/Å, energy MAE {ours_e:.1f} meV/atom", flush=True)
        peer, peer_steps, peer_s = train_peer(root, len(train), args.budget_s)
        peer_f, peer_e = test_errors_peer(peer, root)
        print(f"schnetpack: {peer_steps} steps in {peer_s:.1f} s ({1000 * peer_s / peer_steps:.1f} ms/step), "
              f"test force MAE {peer_f:.1f} meV/Å, energy MAE {peer_e:.1f} meV/atom", flush=True)
    atoms = [len(a) for a in mols]
    print(json.dumps({
        "benchmark": "time_to_accuracy_painn", "ours": ours_f, "peer": peer_f, "unit": "test force MAE, meV/Å",
        "ratio": peer_f / ours_f, "goal_ratio": 1.3, "budget_s": args.budget_s,
        "ours_steps": ours_steps, "peer_steps": peer_steps, "ours_ms_per_step": 1000 * ours_s / ours_steps,
        "peer_ms_per_step": 1000 * peer_s / peer_steps, "ours_energy_mae_mev_per_atom": ours_e,
        "peer_energy_mae_mev_per_atom": peer_e, "train": len(train), "test": len(test),
        "atoms_min_max": [min(atoms), max(atoms)], "labelling_s": label_s, "method": "GFN2-xTB (tblite)",
        "model": f"painn hidden={HIDDEN} layers={LAYERS} rbf={RBF} cutoff={CUTOFF}, fp32, 1 thread",
        "radial_basis": args.radial_basis,
        "peer_name": "schnetpack 2 PaiNN (NeuralNetworkPotential)",
    }))


if __name__ == "__main__":
    main()
