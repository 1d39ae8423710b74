"""Where a training step and a screening pass spend their time on one device: kernels launched and host syncs per
step, the busiest host-side operators, and the training throughput of our PaiNN (hidden 128, 4 layers) and
schnetpack's, same batches (``bench_train``'s). On a GPU both are bound by the host's operator dispatch at these
sizes (8 graphs a step): the kernel and operator counts say why one step costs what it does.

Usage: ``python benchmarks/profile_device_step.py --device cuda`` (a GPU machine, about a minute);
``--device cpu --small`` checks the path. Last line: one JSON object, ``ours`` = the fused path's graphs/s,
``peer`` = schnetpack's, ``ratio`` = ours / peer, with each precision's figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_screen
import bench_train

from models.devices import synchronize

SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy", "cudaMemcpyAsync",
              "cudaEventSynchronize")


def _profile(fn: Any, device: torch.device) -> dict[str, Any]:
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=acts) as prof:
        fn()
        synchronize(device)
    events = prof.events()
    kernels = sum(1 for e in events if e.device_type.name == "CUDA")
    syncs = {name: sum(1 for e in events if e.name == name) for name in SYNC_CALLS}
    ops = sorted(((e.self_cpu_time_total, e.count, e.key) for e in prof.key_averages()
                  if e.key.startswith("aten::")), reverse=True)[:12]
    return {"kernels": kernels, "syncs": {k: v for k, v in syncs.items() if v},
            "aten_ops": sum(e.count for e in prof.key_averages() if e.key.startswith("aten::")),
            "top_ops_us": [(k[6:], n, round(t)) for t, n, k in ops],
            "top_ops_by_count": sorted(((e.count, e.key[6:]) for e in prof.key_averages()
                                        if e.key.startswith("aten::")), reverse=True)[:25]}


def _rate(fn: Any, batches: list[Any], graphs: int, device: torch.device, reps: int) -> float:
    fn(batches[:2])
    best = float("inf")
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        fn(batches)
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return graphs / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--small", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.small:
        bench_train.HIDDEN, bench_train.LAYERS = 32, 2
    n_batches, reps = (2, 1) if args.small else (6, 3)
    figures: dict[str, Any] = {}
    peer_error: str | None = None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bench_train.write_demo_store(root, bench_train.BATCH_GRAPHS * n_batches)
        batches = bench_train.load_batches(root, n_batches)
        graphs = n_batches * bench_train.BATCH_GRAPHS
        for precision in ("fp32", "bf16"):
            train = bench_train.ours_train_fn("painn", args.device, precision)
            rate = _rate(train, batches, graphs, device, reps)
            prof = _profile(lambda t=train: t(batches[:1]), device)
            figures[f"ours_{precision}"] = {"graphs_per_s": rate, **prof}
            print(f"ours       {precision}: {rate:7.1f} graphs/s, {prof['kernels']} kernels, "
                  f"{prof['aten_ops']} aten ops, syncs {prof['syncs']} per step", flush=True)
            try:
                peer, _ = bench_train.peer_fns("painn", batches, args.device, precision)
            except ImportError as exc:  # schnetpack is in the `bench` extra
                peer_error = f"schnetpack not installed (pip install '.[bench]'): {exc}"
                continue
            rate = _rate(peer, batches, graphs, device, reps)
            prof = _profile(lambda p=peer: p(batches[:1]), device)
            figures[f"schnetpack_{precision}"] = {"graphs_per_s": rate, **prof}
            print(f"schnetpack {precision}: {rate:7.1f} graphs/s, {prof['kernels']} kernels, "
                  f"{prof['aten_ops']} aten ops, syncs {prof['syncs']} per step", flush=True)
    # screening: one fused predict over a batch of candidates (16 heads, criterion head's forces)
    from models.inference import Predictor
    from models.nn.model import build_model

    blocks = bench_screen._blocks(8 if args.small else 128, 24 if args.small else 500, 32768, seed=0)
    model = build_model({"family": "painn", "hidden": bench_train.HIDDEN, "layers": bench_train.LAYERS,
                         "cutoff": 5.0, "heads": bench_screen.HEADS, "max_z": 100}).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    pred = Predictor(model, device=device, precision="fp32")
    batch = blocks[0].to_batch()
    bench_screen._ours(pred, [batch], False)
    t0 = time.perf_counter()
    bench_screen._ours(pred, [batch], False)
    synchronize(device)
    secs = time.perf_counter() - t0
    prof = _profile(lambda: bench_screen._ours(pred, [batch], False), device)
    figures["screen_fp32"] = {"seconds_per_batch": secs, "structures": int(batch.num_graphs),
                              "atoms": int(batch.num_nodes), "edges": int(batch.edge_index.size(1)), **prof}
    print(f"screen fp32: {secs:.3f} s for {batch.num_graphs} structures, {prof['kernels']} kernels, "
          f"syncs {prof['syncs']}; top host ops {prof['top_ops_us'][:6]}", flush=True)
    ours = figures["ours_fp32"]["graphs_per_s"]
    peer = figures["schnetpack_fp32"]["graphs_per_s"] if peer_error is None else None
    print(json.dumps({"benchmark": "profile_device_step", "ours": ours, "peer": peer, "unit": "graphs/s",
                      "ratio": ours / peer if peer else None, "peer_error": peer_error, "device": str(device),
                      "torch": torch.__version__,
                      "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                      "variants": figures}))


if __name__ == "__main__":
    main()
