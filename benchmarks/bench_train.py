"""Training and inference throughput of our models against peers, on EMT-labelled demo-like data (CPU).

Measured in one run, interleaved (the order alternates every repetition), medians of 7 repetitions; each ratio
is the median of the per-repetition ratios of the two back-to-back passes (with their range):

* PaiNN (hidden 128, 4 layers, 20 RBF, 5 Å cutoff): our training loop (:class:`models.training.loop.Trainer`:
  forward with forces, multi-task loss, backward, gradient sync, clipping, AdamW) vs schnetpack 2's PaiNN
  (``NeuralNetworkPotential`` + ``Atomwise`` + ``Forces``) with the same loss form (energy per atom MSE +
  10 x force MSE), the same optimizer, clipping, precision (fp32) and batches. Inference: energy + forces per
  structure, our :class:`models.inference.Predictor` (one head) vs schnetpack in eval mode.
* SchNet (hidden 128, 4 interactions, 20 Gaussians, 5 Å): ours vs ``torch_geometric.nn.models.SchNet``.
  PyG's SchNet builds its graph with ``radius_graph`` (needs torch-cluster, not installable here), so it gets
  the SAME precomputed periodic edges through its ``interaction_graph`` hook, which recomputes the distances
  from positions (so forces flow) exactly as our model does: graph construction is excluded from both sides.
* Screening with 4 heads: our fused :class:`models.inference.Predictor` vs the model run once per head.
* Peak memory: each implementation trains in its own subprocess; we report its peak RSS above the RSS after
  imports and data loading.
* 2-rank DDP weak scaling on CPU: 1 rank x 1 thread vs 2 ranks x 1 thread (gloo), same batches per rank;
  efficiency = step time with 1 rank / step time with 2 ranks.

Threads: 1 by default (``--threads N`` to change); on a shared machine OpenMP's multi-threaded timings swing
wildly with the neighbours' load, single-threaded ones are reproducible. Every throughput is reported twice:
from wall time (``ours``, ``peer``, ``ratio``) and from this process's CPU time (``ours_cpu``, ``peer_cpu``,
``ratio_cpu``), which excludes time spent waiting for a core on a loaded machine.

Data: rattled, strained fcc Cu/Ag/Au cells (32 atoms) and small H/C/N/O molecules, EMT energies and forces,
written to a temporary ADIOS2 store and read back as batches of 8 graphs (half cells, half molecules).

Schnetpack 2.0.4 imports ``T_co`` from ``torch.utils.data.dataloader``, which torch 2.13 no longer defines;
the benchmark defines it (a ``TypeVar``) before importing schnetpack. Nothing else is patched.

The last line printed is one JSON object: ``benchmark``, ``ours``, ``peer``, ``unit``, ``ratio`` (PaiNN training
graphs/s, ratio > 1 = we are faster) and every other figure under ``results``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import keys

REPO = Path(__file__).resolve().parents[1]

HIDDEN, LAYERS, RBF, CUTOFF = 128, 4, 20, 5.0
BATCH_GRAPHS = 8


# ------------------------------------------------------------------------------------------------ data
def torchrun_train(cfg: dict[str, Any], ranks: int, out: Path) -> dict[str, Any]:
    """``models.train`` with ``cfg`` on ``ranks`` CPU ranks (torchrun, gloo, one thread each) writing under
    ``out``; returns its result.

    Raises:
        RuntimeError: the run failed (with the end of its stderr).
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "cfg.json").write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           "-m", "models.train", "--config", str(out / "cfg.json"), "--result", str(out / "result.json")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    result: dict[str, Any] = json.loads((out / "result.json").read_text())
    return result


def write_demo_store(root: Path, n_graphs: int, seed: int = 0, name: str = "bench", head_id: int = 0,
                     split: str = "train") -> Path:
    """EMT-labelled cells and molecules as a ``<name>/<split>`` store under ``root`` (feeding head ``head_id``)."""
    from ase.build import bulk, molecule
    from ase.calculators.emt import EMT

    from models.data.graphs import radius_graph_pbc
    from models.data.shards import pack_graphs, write_split

    rng = np.random.default_rng(seed)
    recs = []
    for k in range(n_graphs):
        if k % 2 == 0:
            el, a = [("Cu", 3.61), ("Ag", 4.09), ("Au", 4.08)][(k // 2) % 3]
            atoms = bulk(el, "fcc", a=a * rng.uniform(0.97, 1.03), cubic=True).repeat((2, 2, 2))
            atoms.rattle(stdev=0.08, seed=int(rng.integers(1 << 31)))
        else:
            atoms = molecule(["H2O", "CH4", "NH3", "C2H4", "CH3OH", "C6H6"][(k // 2) % 6])
            atoms.rattle(stdev=0.05, seed=int(rng.integers(1 << 31)))
        atoms.calc = EMT()
        periodic = bool(atoms.pbc.any())
        cell = np.asarray(atoms.cell[:]) if periodic else np.zeros((3, 3))
        ei, shift, _ = radius_graph_pbc(atoms.positions, cell, atoms.pbc, CUTOFF)
        recs.append(
            {
                "z": atoms.numbers,
                "pos": atoms.positions,
                "forces": atoms.get_forces(),
                "cell": cell,
                "pbc": atoms.pbc,
                "energy": float(atoms.get_potential_energy()),
                "eref": 0.0,
                "stress": None,
                "sid": k,
                "edge_index": ei,
                "shift": shift,
            }
        )
    write_split(root / name / split, pack_graphs(recs), {"dataset": name, "head_id": head_id})
    return root


def load_batches(root: Path, n_batches: int) -> list[Any]:
    """Batches of :data:`BATCH_GRAPHS` consecutive graphs (alternating cells and molecules)."""
    from models.data.store import open_split

    store = open_split(root, "bench", "train", dtype=torch.float32)
    return [store.get_chunk(b * BATCH_GRAPHS, (b + 1) * BATCH_GRAPHS) for b in range(n_batches)]


# ------------------------------------------------------------------------------------------------ ours
def ours_trainer(family: str, device: str = "cpu", precision: str = "fp32") -> Any:
    """Our model + training loop (single process: the gradient sync is a no-op) on ``device`` in ``precision``."""
    from models.distributed import GradSync
    from models.nn.loss import multitask_loss
    from models.nn.model import build_model
    from models.training.loop import Trainer
    from models.training.schedule import Schedule

    torch.manual_seed(0)
    model = build_model(
        {"family": family, "hidden": HIDDEN, "layers": LAYERS, "cutoff": CUTOFF, "num_rbf": RBF, "heads": [0]}
    )
    from models.nn.precision import param_dtype

    model = model.to(device=torch.device(device), dtype=param_dtype(precision))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return Trainer(
        model,
        optimizer=opt,
        schedule=Schedule(opt, {"kind": "constant"}, 1),
        sync=GradSync(model),
        loss_fn=multitask_loss,
        device=torch.device(device),
        precision=precision,
        force_weight=10.0,
        grad_clip=10.0,
    )


def ours_train_fn(family: str, device: str = "cpu", precision: str = "fp32") -> Callable[[list[Any]], None]:
    trainer = ours_trainer(family, device, precision)
    return lambda batches: trainer.train_epoch(batches, len(batches))


def ours_infer_fn(family: str) -> Callable[[list[Any]], None]:
    from models.inference import Predictor

    predictor = Predictor(ours_trainer(family).model, precision="fp32")

    def run(batches: list[Any]) -> None:
        for b in batches:
            predictor.predict(b, heads=[0], forces=True)

    return run


def fused_heads_fns(n_heads: int) -> dict[str, Callable[[list[Any]], None]]:
    """Screening with ``n_heads`` heads: our fused predictor (encoder once, batched heads, one vmapped
    backward for per-head forces) vs the plain model run once per head (the naive way)."""
    from models.inference import Predictor
    from models.nn.model import build_model

    torch.manual_seed(0)
    model = build_model(
        {
            "family": "painn",
            "hidden": HIDDEN,
            "layers": LAYERS,
            "cutoff": CUTOFF,
            "num_rbf": RBF,
            "heads": list(range(n_heads)),
        }
    ).eval()
    predictor = Predictor(model, precision="fp32")

    def fused(batches: list[Any]) -> None:
        for b in batches:
            predictor.predict(b, forces=True)

    def per_head(batches: list[Any]) -> None:
        for b in batches:
            for h in range(n_heads):
                routed = b.clone()
                routed[keys.HEAD] = torch.full_like(b[keys.HEAD], h)
                model(routed, forces=True)

    return {"ours": fused, "peer": per_head}


# ------------------------------------------------------------------------------------------------ peers
def _import_schnetpack() -> Any:
    import torch.utils.data.dataloader as dl

    if not hasattr(dl, "T_co"):
        dl.T_co = typing.TypeVar("T_co", covariant=True)  # removed in torch 2.13; schnetpack 2.0.4 imports it
    import schnetpack

    return schnetpack


def to_schnetpack(batch: Any) -> dict[str, torch.Tensor]:
    """Our batch as schnetpack inputs (same edges; Cartesian offsets = shift @ cell)."""
    spk = _import_schnetpack()
    p = spk.properties
    j, i = batch[keys.EDGE_INDEX]
    cell = batch[keys.CELL]
    offsets = torch.bmm(batch[keys.SHIFT].unsqueeze(1), cell[batch[keys.BATCH][i]]).squeeze(1)
    return {
        p.Z: batch[keys.Z],
        p.R: batch[keys.POS].clone(),
        p.cell: cell,
        p.pbc: batch[keys.PBC],
        p.idx_m: batch[keys.BATCH],
        p.idx_i: i,
        p.idx_j: j,
        p.offsets: offsets,
        p.n_atoms: batch[keys.NATOMS],
        "energy_ref": batch[keys.ENERGY],
        "forces_ref": batch[keys.FORCES],
    }


def schnetpack_painn() -> Any:
    spk = _import_schnetpack()
    torch.manual_seed(0)
    rep = spk.representation.PaiNN(
        n_atom_basis=HIDDEN,
        n_interactions=LAYERS,
        radial_basis=spk.nn.GaussianRBF(n_rbf=RBF, cutoff=CUTOFF),
        cutoff_fn=spk.nn.CosineCutoff(CUTOFF),
    )
    return spk.model.NeuralNetworkPotential(
        representation=rep,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[
            spk.atomistic.Atomwise(n_in=HIDDEN, output_key="energy"),
            spk.atomistic.Forces(energy_key="energy", force_key="forces"),
        ],
    )


class PrecomputedGraph(torch.nn.Module):
    """``interaction_graph`` for PyG's SchNet: our stored periodic edges, distances recomputed from ``pos``."""

    def __init__(self) -> None:
        super().__init__()
        self.edge_index = torch.zeros(2, 0, dtype=torch.long)
        self.offsets = torch.zeros(0, 3)

    def forward(self, pos: torch.Tensor, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        j, i = self.edge_index
        vec = pos[j] - pos[i] + self.offsets
        return self.edge_index, vec.norm(dim=-1)


def pyg_schnet() -> tuple[Any, PrecomputedGraph]:
    from torch_geometric.nn.models import SchNet

    torch.manual_seed(0)
    graph = PrecomputedGraph()
    return SchNet(
        hidden_channels=HIDDEN,
        num_filters=HIDDEN,
        num_interactions=LAYERS,
        num_gaussians=RBF,
        cutoff=CUTOFF,
        interaction_graph=graph,
    ), graph


def _peer_loss(e: torch.Tensor, f: torch.Tensor, batch: Any) -> torch.Tensor:
    n = batch[keys.NATOMS].to(e.dtype)
    return (((e - batch[keys.ENERGY]) / n) ** 2).mean() + 10.0 * ((f - batch[keys.FORCES]) ** 2).mean()


def peer_fns(
    family: str, batches: list[Any], device: str = "cpu", precision: str = "fp32"
) -> tuple[Callable[[list[Any]], None], Callable[[list[Any]], None]]:
    """(train, infer) callables of the peer of ``family``; inputs are converted once, outside the timing.

    On ``device`` in ``precision`` (schnetpack's PaiNN only): fp64 casts the model and the floating inputs,
    bf16 runs the forward under ``torch.autocast`` (the same as our ``bf16``: fp32 weights, bf16 matmuls).
    """
    dev = torch.device(device)
    if family == "painn":
        dtype = torch.float64 if precision == "fp64" else torch.float32
        model = schnetpack_painn().to(device=dev, dtype=dtype)
        inputs = {id(b): {k: (v.to(dev, dtype=dtype) if v.is_floating_point() else v.to(dev))
                          for k, v in to_schnetpack(b).items()} for b in batches}

        def forward(b: Any) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = model(dict(inputs[id(b)]))
            return out["energy"], out["forces"]

        def loss(e: torch.Tensor, f: torch.Tensor, b: Any) -> torch.Tensor:
            ref = inputs[id(b)]
            n = ref[_import_schnetpack().properties.n_atoms].to(e.dtype)
            return ((((e - ref["energy_ref"].to(e.dtype)) / n) ** 2).mean()
                    + 10.0 * ((f - ref["forces_ref"].to(f.dtype)) ** 2).mean())
    else:
        model, graph = pyg_schnet()
        prepared = {}
        for b in batches:
            i = b[keys.EDGE_INDEX][1]
            offsets = torch.bmm(b[keys.SHIFT].unsqueeze(1), b[keys.CELL][b[keys.BATCH][i]]).squeeze(1)
            prepared[id(b)] = (b[keys.EDGE_INDEX], offsets)

        def forward(b: Any) -> tuple[torch.Tensor, torch.Tensor]:
            graph.edge_index, graph.offsets = prepared[id(b)]
            pos = b[keys.POS].detach().requires_grad_(True)
            e = model(b[keys.Z], pos, b[keys.BATCH]).squeeze(-1)
            (g,) = torch.autograd.grad(e.sum(), pos, create_graph=model.training)
            return e, -g

        loss = _peer_loss

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train(bs: list[Any]) -> None:
        model.train()
        for b in bs:
            opt.zero_grad(set_to_none=True)
            e, f = forward(b)
            loss(e, f, b).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()

    def infer(bs: list[Any]) -> None:
        model.eval()
        for b in bs:
            e, f = forward(b)
            e.detach(), f.detach()

    return train, infer


# ------------------------------------------------------------------------------------------------ timing
def interleaved(
    fns: dict[str, Callable[[list[Any]], None]], batches: list[Any], reps: int
) -> dict[str, float]:
    """Median seconds per pass over ``batches`` of each function; one warm-up pass, alternating order.

    Returns ``{name: wall seconds, name + "_cpu": CPU seconds of this process, "pairs": per-repetition
    ``peer / ours`` wall-time ratios}`` (with ``ours`` and ``peer`` among the names). On a machine shared with
    other jobs the wall time includes waiting for a core; the CPU time (user + system, all threads of this
    process) is what the implementation itself costs and is far less noisy. The two of one repetition run back
    to back, so their ratio is not moved by the machine getting slower or faster between repetitions (seen
    here: single passes of the same code differing 1.5x over minutes).
    """
    for fn in fns.values():
        fn(batches[:1])
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(reps):
        for name in names if r % 2 == 0 else reversed(names):
            t0, c0 = time.perf_counter(), time.process_time()
            fns[name](batches)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    out: dict[str, Any] = {**{k: statistics.median(v) for k, v in times.items()},
                           **{f"{k}_cpu": statistics.median(v) for k, v in cpu.items()}}
    if "ours" in times and "peer" in times:
        out["pairs"] = [p / o for o, p in zip(times["ours"], times["peer"], strict=True)]
    return out


def throughput(t: dict[str, Any], items: int, unit: str, peer_name: str) -> dict[str, Any]:
    """Items/s of ``ours`` and ``peer`` from :func:`interleaved` timings; ratio > 1 = we are faster.

    ``ratio`` is the median of the per-repetition (paired) ratios, ``ratio_range`` their smallest and largest,
    ``ratio_of_medians`` the ratio of the two median times.
    """
    pairs = t["pairs"]
    return {
        "ours": items / t["ours"],
        "peer": items / t["peer"],
        "peer_name": peer_name,
        "unit": unit,
        "ratio": statistics.median(pairs),
        "ratio_range": [min(pairs), max(pairs)],
        "ratio_of_medians": t["peer"] / t["ours"],
        "ours_cpu": items / t["ours_cpu"],
        "peer_cpu": items / t["peer_cpu"],
        "ratio_cpu": t["peer_cpu"] / t["ours_cpu"],
    }


# ------------------------------------------------------------------------------------------------ memory
def _proc_status_mb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MB (``ru_maxrss`` survives ``exec`` on Linux, so a child would
    report its parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def memory_probe(impl: str, root: Path, n_batches: int) -> dict[str, float]:
    """Run in a subprocess: peak RSS of training ``impl``, and its rise above the RSS after imports and data
    loading."""
    batches = load_batches(root, n_batches)
    family = "painn" if "painn" in impl else "schnet"
    if impl.endswith("peer") and family == "painn":
        _import_schnetpack()
    base = _proc_status_mb("VmRSS")
    fn = ours_train_fn(family) if impl.endswith("ours") else peer_fns(family, batches)[0]
    fn(batches)
    fn(batches)
    peak = _proc_status_mb("VmHWM")
    return {"peak_rss_mb": peak, "train_delta_mb": peak - base}


def run_probe(impl: str, root: Path, n_batches: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--probe", impl, "--store", str(root), "--batches", str(n_batches)]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if out.returncode != 0:
        return {"error": out.stderr[-500:]}  # type: ignore[dict-item]
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ DDP
def _ddp_worker(rank: int, world: int, port: int, root: str, n_batches: int, reps: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        trainer = ours_trainer("painn")
        from models.distributed import GradSync

        trainer.sync = GradSync(trainer.model)
        trainer.sync.broadcast_all(0)
        batches = load_batches(Path(root), n_batches)
        trainer.train_epoch(batches[:1], 1)
        times = []
        for _ in range(reps):
            dist.barrier()
            t0 = time.perf_counter()
            trainer.train_epoch(batches, len(batches))
            times.append(time.perf_counter() - t0)
        if rank == 0:
            Path(out).write_text(json.dumps({"seconds": statistics.median(times)}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def ddp_step_seconds(world: int, root: Path, n_batches: int, reps: int) -> float:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = Path(tempfile.mkdtemp()) / "ddp.json"
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_ddp_worker, args=(r, world, port, str(root), n_batches, reps, str(out)))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
        if p.is_alive():
            p.kill()
            raise RuntimeError("DDP benchmark rank hung")
    return json.loads(out.read_text())["seconds"] / n_batches


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (fewer batches and repetitions)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine multi-threaded OpenMP timings swing by 3x+)",
    )
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--store", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-ddp", action="store_true", help="skip the 2-rank weak-scaling figure")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        print(json.dumps(memory_probe(args.probe, Path(args.store), args.batches)))
        return
    n_batches, reps = (2, 3) if args.quick else (6, 7)
    root = write_demo_store(Path(tempfile.mkdtemp(prefix="bench_train_")), n_batches * BATCH_GRAPHS)
    batches = load_batches(root, n_batches)
    graphs = n_batches * BATCH_GRAPHS
    atoms = int(sum(int(b[keys.NATOMS].sum()) for b in batches))
    results: dict[str, Any] = {
        "graphs_per_pass": graphs,
        "atoms_per_pass": atoms,
        "reps": reps,
        "threads": torch.get_num_threads(),
        "precision": "fp32",
    }
    for family, peer_name in (("painn", "schnetpack"), ("schnet", "pyg")):
        try:
            peer_train, peer_infer = peer_fns(family, batches)
        except Exception as exc:  # report a peer that cannot run rather than dying
            results[f"{family}_peer_error"] = repr(exc)
            continue
        t = interleaved({"ours": ours_train_fn(family), "peer": peer_train}, batches, reps)
        results[f"{family}_train"] = throughput(t, graphs, "graphs/s", peer_name)
        t = interleaved({"ours": ours_infer_fn(family), "peer": peer_infer}, batches, reps)
        results[f"{family}_infer"] = throughput(t, graphs, "structures/s", peer_name)
        results[f"{family}_memory"] = {
            k: run_probe(f"{family}-{k}", root, n_batches) for k in ("ours", "peer")
        }
        print(json.dumps({family: {k: v for k, v in results.items() if k.startswith(family)}}), flush=True)
    t = interleaved(fused_heads_fns(4), batches, reps)
    results["painn_infer_4_heads"] = throughput(t, graphs, "structures/s (4 heads)", "our model run once per head")
    if not args.no_ddp:
        one = ddp_step_seconds(1, root, n_batches, reps)
        two = ddp_step_seconds(2, root, n_batches, reps)
        results["ddp_weak_scaling"] = {
            "step_s_1rank": one,
            "step_s_2ranks": two,
            "efficiency": one / two,
            "threads_per_rank": 1,
        }
    head = results.get("painn_train", {})
    print(
        json.dumps(
            {
                "benchmark": "train_painn_cpu_vs_schnetpack",
                "ours": head.get("ours"),
                "peer": head.get("peer"),
                "unit": "graphs/s",
                "ratio": head.get("ratio"),
                "quick": args.quick,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
