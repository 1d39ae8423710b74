"""Screening throughput (structures/s, energy + forces): fused multi-head inference vs a naive per-head loop.

Model: PaiNN, 128 features, 4 layers, 5 Å cutoff, 16 heads (the seed work's head count), random weights (the
cost does not depend on the values). Structures: the seeded candidate generator (:mod:`models.candidates`),
2-500 atoms, periodic Cu/Ag/Au/Ni/Pd/Pt/Al cells; graphs are built once, outside the timed region, and both
sides evaluate the same batches (atom budget ``--batch-atoms``) in the same run.

Two workloads, fp32 and bf16:

* ``screen`` (the screening workload, the headline): every head's energy and the criterion head's forces.
  Ours: :class:`models.inference.Predictor` — encoder once, all heads in one stacked pass, forces from ONE
  backward pass. Peer: the naive loop — the model evaluated once per head (``head`` routed to that head),
  energies without gradients, the criterion head's pass with forces.
* ``all_forces``: every head's energy AND forces. Ours: encoder once, one backward per head on the retained
  graph. Peer: the model evaluated with forces once per head.

``ratio`` = ours / peer structures/s of the ``screen`` workload in fp32. Goal >= 3x. ``--quick`` (4 structures
of 2-200 atoms, screen workload only) keeps it under 3 minutes on 2 cores; ``--device cuda`` on a GPU.
Measured (2 shared cores, 6 structures of 2-500 atoms, mean 177): screen x5.8 (fp32), x4.8 (bf16); all_forces
x1.03 (fp32), x2.1 (bf16).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from models import keys
from models.candidates import CandidateSpec, candidates
from models.inference import Predictor, atom_budget_chunks
from models.nn.model import build_model
from models.nn.precision import cast_batch, param_dtype, precision_context
from models.screen import block_from_atoms

HEADS = list(range(16))
#: The seed work's screening rate per Frontier GCD (structures/s, FP64, 16 heads, 2-500 atoms).
SEED_PER_GCD = 300.0


def _blocks(n: int, max_atoms: int, budget: int, seed: int) -> list[Any]:
    spec = CandidateSpec(min_atoms=2, max_atoms=max_atoms)
    atoms = list(candidates(seed, 0, n, spec))
    items = [(a, k, str(k)) for k, a in enumerate(atoms)]
    return [block_from_atoms(items[a:b], 5.0, 32) for a, b in atom_budget_chunks([len(a) for a in atoms], budget)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ours(pred: Predictor, batches: list[Any], all_forces: bool) -> None:
    for b in batches:
        pred.predict(b.clone(), heads=HEADS, forces=True, force_heads=None if all_forces else [HEADS[0]])


def _naive(model: torch.nn.Module, batches: list[Any], precision: str, device: torch.device,
           all_forces: bool) -> None:
    for b in batches:
        for h in HEADS:
            routed = cast_batch(b.clone().to(device), precision)
            routed[keys.HEAD] = torch.full_like(routed[keys.HEAD], h)
            want_forces = all_forces or h == HEADS[0]
            with precision_context(precision, device):
                if want_forces:
                    model(routed, forces=True)
                else:
                    with torch.no_grad():
                        model(routed, forces=False)


def _time(fn: Any, device: torch.device, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", type=int, default=24)
    parser.add_argument("--max-atoms", type=int, default=500)
    parser.add_argument("--batch-atoms", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="4 structures of 2-200 atoms, screen workload only (< 3 min on 2 cores)")
    parser.add_argument("--no-all-forces", action="store_true", help="skip the all_forces workload")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--small", action="store_true",
                        help="3 structures of 2-24 atoms, hidden 32, 2 layers, screen workload: checks the path")
    args = parser.parse_args()
    n = 3 if args.small else 4 if args.quick else args.structures
    max_atoms = 24 if args.small else min(args.max_atoms, 200) if args.quick else args.max_atoms
    hidden, layers = (32, 2) if args.small else (128, 4)
    args.no_all_forces = args.no_all_forces or args.small
    workloads = [("screen", False)] + ([] if args.quick or args.no_all_forces else [("all_forces", True)])
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t0 = time.perf_counter()
    blocks = _blocks(n, max_atoms, args.batch_atoms, seed=0)
    gen_s = time.perf_counter() - t0
    natoms = int(sum(b.natoms.sum() for b in blocks))
    print(f"{n} structures ({natoms} atoms) generated with their graphs in {gen_s:.1f} s", flush=True)
    torch.manual_seed(0)
    base = build_model({"family": "painn", "hidden": hidden, "layers": layers, "cutoff": 5.0, "heads": HEADS,
                        "max_z": 100})
    figures: dict[str, Any] = {}
    for precision in args.precisions.split(","):
        model = build_model(dict(base.config))
        model.load_state_dict(base.state_dict())
        model = model.to(device=device, dtype=param_dtype(precision)).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        pred = Predictor(model, device=device, precision=precision)
        batches = [b.to_batch() for b in blocks]
        _ours(pred, batches[:1], False)  # warm-up
        for workload, all_forces in workloads:
            ours_s = _time(lambda p=pred, bs=batches, af=all_forces: _ours(p, bs, af), device, args.repeats)
            peer_s = _time(lambda mo=model, bs=batches, pr=precision, af=all_forces: _naive(mo, bs, pr, device, af),
                           device, args.repeats)
            figures[f"{workload}_{precision}"] = {"ours_structures_per_s": n / ours_s,
                                                  "peer_structures_per_s": n / peer_s, "ratio": peer_s / ours_s}
            print(f"{workload:10s} {precision}: ours {n / ours_s:8.2f} structures/s, naive {n / peer_s:8.2f} "
                  f"structures/s, x{peer_s / ours_s:.2f}", flush=True)
    head = figures.get("screen_fp32") or next(iter(figures.values()))
    print(json.dumps({
        "benchmark": "screen_structures_per_s", "ours": head["ours_structures_per_s"],
        "peer": head["peer_structures_per_s"], "unit": "structures/s", "ratio": head["ratio"],
        "goal_ratio": 3.0, "workloads": figures, "structures": n, "atoms": natoms,
        "mean_atoms": natoms / n, "heads": len(HEADS), "model": f"painn hidden={hidden} layers={layers} cutoff=5",
        "device": str(device), "threads": torch.get_num_threads(), "generation_s": gen_s,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cuda": torch.version.cuda,
        # the seed work's figure (not a peer run): 1.1 billion structures in 50 s on Frontier, FP64, 16 heads,
        # 2-500 atoms: about 300 structures/s per GCD
        "seed_structures_per_s_per_gcd": SEED_PER_GCD,
        "vs_seed": {k: v["ours_structures_per_s"] / SEED_PER_GCD for k, v in figures.items()},
        "peer_name": "naive per-head loop of MultiHeadModel.forward",
        "np_version": np.__version__, "torch_version": torch.__version__,
    }))


if __name__ == "__main__":
    main()
