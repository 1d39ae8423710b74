"""Training throughput of PaiNN (hidden 128, 4 layers, 20 RBF, 5 Å) on one device, per precision: our training
loop against schnetpack 2's PaiNN, same batches, same loss form and optimizer (see ``bench_train.py``, whose
data, models and peer this reuses), with the peak device memory of each.

* ours — :class:`models.training.loop.Trainer` on ``--device`` in fp32, bf16 (autocast) and fp64;
* peer — schnetpack's ``NeuralNetworkPotential`` (PaiNN + Atomwise + Forces) on the same device: fp64 with the
  model and inputs in float64, bf16 under ``torch.autocast``.

Passes alternate (ours, peer, peer, ours, ...); a CUDA device is synchronised at the end of every pass. Peak
memory on CUDA is ``torch.cuda.max_memory_allocated`` over one pass (after a reset); on the CPU it is not
measured here (``bench_train.py`` measures peak RSS in subprocesses). ``--small`` (hidden 32, 2 layers, 2
batches) only checks the path end to end. Last line: one JSON object; ``ratio`` = ours / peer graphs/s in
fp32 (> 1: ours trains faster). The peer is in the ``bench`` extra; without it ours is measured alone, the
peer's figures are null and ``peer_error`` says why.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_train  # the data, models and peer of the CPU benchmark


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(fn: Any, batches: list[Any], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    fn(batches)
    _sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precisions", default="fp32,bf16,fp64")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--small", action="store_true", help="hidden 32, 2 layers, 2 batches, 2 repetitions")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.small:
        bench_train.HIDDEN, bench_train.LAYERS = 32, 2
        args.batches, args.reps = 2, 2
    root = bench_train.write_demo_store(Path(tempfile.mkdtemp(prefix="bench_train_device_")),
                                        args.batches * bench_train.BATCH_GRAPHS)
    batches = bench_train.load_batches(root, args.batches)
    graphs = args.batches * bench_train.BATCH_GRAPHS
    figures: dict[str, Any] = {}
    peer_error = None
    try:
        bench_train._import_schnetpack()
    except ImportError as exc:  # the peer is in the `bench` extra: measure ours alone and say why
        peer_error = f"{exc} (pip install -e '.[bench]')"
    for precision in args.precisions.split(","):
        ours_train = bench_train.ours_train_fn("painn", str(device), precision)

        def synced(fn: Any) -> Any:
            def run(bs: list[Any]) -> None:
                fn(bs)
                _sync(device)
            return run

        fns = {"ours": synced(ours_train)}
        if peer_error is None:
            fns["peer"] = synced(bench_train.peer_fns("painn", batches, str(device), precision)[0])
        t = bench_train.interleaved(fns, batches, args.reps)
        if peer_error is None:
            fig = bench_train.throughput(t, graphs, "graphs/s", "schnetpack")
        else:
            fig = {"ours": graphs / t["ours"], "peer": None, "ratio": None, "unit": "graphs/s",
                   "peer_error": peer_error}
        fig["ours_peak_mb"] = _peak_mb(fns["ours"], batches, device)
        fig["peer_peak_mb"] = _peak_mb(fns["peer"], batches, device) if "peer" in fns else None
        figures[precision] = fig
        peer = "schnetpack not installed" if fig["peer"] is None else f"schnetpack {fig['peer']:.1f} graphs/s, x{fig['ratio']:.2f}"
        print(f"{precision}: ours {fig['ours']:.1f} graphs/s, {peer}"
              + ("" if fig["ours_peak_mb"] is None else f"; peak {fig['ours_peak_mb']:.0f} MiB (ours)"),
              file=sys.stderr, flush=True)
    head = figures.get("fp32") or next(iter(figures.values()))
    print(json.dumps({
        "benchmark": "train_painn_device_vs_schnetpack", "ours": head["ours"], "peer": head["peer"],
        "unit": "graphs/s", "ratio": head["ratio"], "precisions": figures, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "graphs_per_pass": graphs,
        "model": f"painn hidden={bench_train.HIDDEN} layers={bench_train.LAYERS}", "reps": args.reps,
        "peer_name": "schnetpack 2 PaiNN (NeuralNetworkPotential)", "peer_error": peer_error,
    }))


if __name__ == "__main__":
    main()
