"""ASE molecular dynamics steps per second through our calculator against schnetpack's, same model size, same
systems, same integrator.

* ours — :class:`models.ase_calculator.ModelCalculator` over a checkpoint of our PaiNN (hidden 64, 3 layers,
  20 radial functions, 5 Å cutoff, one head), fp32: each step builds the graph with vesin and evaluates energy,
  forces and (for cells) stress;
* peer — schnetpack 2's ``SpkCalculator`` over its PaiNN of the same size (``NeuralNetworkPotential`` with
  ``Atomwise`` + ``Forces``), fp32, with its fastest neighbour list (``MatScipyNeighborList``).

Systems: a rattled fcc Cu supercell of 108 atoms (periodic) and ethanol (9 atoms, open boundaries). Velocity
Verlet, 1 fs, ``--steps`` steps after 3 warm-up steps, 300 K Maxwell-Boltzmann start, one thread; ours and the peer alternate over ``--reps`` repetitions and the median is kept. ``ratio`` = ours / peer
steps per second on the crystal (> 1: ours is faster); the molecule's figures are beside it. Goal >= 2.
Needs the ``bench`` extra (schnetpack).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_train  # schnetpack's import shim

from models import checkpoint
from models.ase_calculator import ModelCalculator
from models.nn.model import build_model

HIDDEN, LAYERS, RBF, CUTOFF = 64, 3, 20, 5.0


def systems() -> dict[str, Atoms]:
    """The two systems, rattled (fixed seeds)."""
    crystal = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
    crystal.rattle(0.05, seed=0)
    mol = molecule("CH3CH2OH")
    mol.rattle(0.02, seed=1)
    return {"crystal": crystal, "molecule": mol}


def our_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model({"family": "painn", "hidden": HIDDEN, "layers": LAYERS, "num_rbf": RBF, "cutoff": CUTOFF,
                         "heads": [0], "max_z": 100})
    checkpoint.save({"model_config": dict(model.config), "model_state": model.state_dict(),
                     "head_names": {"0": "bench"}, "graph": {"cutoff": CUTOFF, "max_neighbours": None}}, path)
    return path


def peer_model(path: Path) -> Path:
    spk = bench_train._import_schnetpack()
    torch.manual_seed(0)
    rep = spk.representation.PaiNN(n_atom_basis=HIDDEN, n_interactions=LAYERS,
                                    radial_basis=spk.nn.GaussianRBF(n_rbf=RBF, cutoff=CUTOFF),
                                    cutoff_fn=spk.nn.CosineCutoff(CUTOFF))
    model = spk.model.NeuralNetworkPotential(
        representation=rep, input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=HIDDEN, output_key="energy"),
                        spk.atomistic.Forces(energy_key="energy", force_key="forces")])
    torch.save(model, path)
    return path


def peer_calculator(path: Path) -> Any:
    spk = bench_train._import_schnetpack()
    from schnetpack.interfaces import SpkCalculator

    # schnetpack 2.0.4 pickles whole models and loads them with torch.load's default, which torch >= 2.6 made
    # weights_only: torch's documented switch restores the old default for this load (our own file, trusted)
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        return SpkCalculator(str(path), neighbor_list=spk.transform.MatScipyNeighborList(cutoff=CUTOFF),
                             energy_key="energy", force_key="forces", energy_unit="eV", position_unit="Ang")
    finally:
        del os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"]


def md_steps_per_s(atoms: Atoms, calc: Any, steps: int) -> float:
    a = atoms.copy()
    a.calc = calc
    MaxwellBoltzmannDistribution(a, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(a, 1.0 * units.fs)
    dyn.run(3)
    t0 = time.perf_counter()
    dyn.run(steps)
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ours_calc = ModelCalculator(our_checkpoint(Path(tmp) / "ours.pt"), precision="fp32")
        peer_calc = peer_calculator(peer_model(Path(tmp) / "peer.pt"))
        for name, atoms in systems().items():
            ours, peer = [], []
            for rep in range(args.reps):
                order = [("ours", ours_calc, ours), ("peer", peer_calc, peer)]
                for _, calc, into in (order if rep % 2 == 0 else order[::-1]):
                    into.append(md_steps_per_s(atoms, calc, args.steps))
            o, p = statistics.median(ours), statistics.median(peer)
            figures[name] = {"atoms": len(atoms), "ours_steps_per_s": o, "peer_steps_per_s": p, "ratio": o / p,
                             "ours_all": ours, "peer_all": peer}
            print(f"{name:9s} ({len(atoms)} atoms): ours {o:7.1f} steps/s, schnetpack {p:7.1f} steps/s, "
                  f"x{o / p:.2f}", flush=True)
    head = figures["crystal"]
    print(json.dumps({"benchmark": "md_steps_per_s", "ours": head["ours_steps_per_s"],
                      "peer": head["peer_steps_per_s"], "unit": "MD steps/s (108-atom Cu cell, fp32, 1 thread)",
                      "ratio": head["ratio"], "goal_ratio": 2.0, "systems": figures,
                      "model": f"painn hidden={HIDDEN} layers={LAYERS} rbf={RBF} cutoff={CUTOFF}",
                      "peer_name": "schnetpack 2 SpkCalculator + MatScipyNeighborList",
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
