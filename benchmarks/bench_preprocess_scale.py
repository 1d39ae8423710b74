"""Preprocessing at scale: the ``models.preprocess`` app against a plain ASE read + neighbour-list loop.

The same synthetic extxyz set (small organic molecules from ASE's templates, randomly rotated and rattled,
labelled with per-element energies plus noise and small random forces: the throughput and memory of reading,
graph building and writing do not depend on the labels' physics) at several sizes. Ours: the real app on one
core (streaming read, filters, deduplication, splits, vesin radius graphs, reference-energy fit, store shards
written as they fill: it holds at most ``--shard-size`` graphs per split).
Peer: ``ase.io.iread`` + ``ase.neighborlist.neighbor_list`` per structure, the arrays collected in lists and saved
with ``np.savez`` at the end, the loop people write first. Each run is its own process; its peak resident
memory is the process's own (``wait4``), its time the wall time.

Prints per size the structures per second per core and the peak memory of both, and as its last line a JSON
object whose ``ratio`` is our throughput over the peer's at the largest size (> 1: we are faster), with the
memory growth (peak at the largest size over the smallest) of each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

#: ASE templates of the synthetic set (H, C, N, O only, 3-12 atoms).
TEMPLATES = ("CH4", "H2O", "NH3", "C2H6", "CH3OH", "C2H4", "HCOOH", "CH3CHO", "CH3CH2OH", "C6H6")
#: Element energies of the synthetic labels, eV.
E_REF = {1: -13.6, 6: -1029.0, 7: -1484.0, 8: -2041.0}


def write_set(path: Path, n: int, seed: int = 0) -> None:
    """``n`` molecules as extxyz (energy in the comment line, forces per atom), written in blocks."""
    from ase.build import molecule
    from ase.data import chemical_symbols

    rng = np.random.default_rng(seed)
    base = [molecule(t) for t in TEMPLATES]
    with path.open("w") as fh:
        for k in range(n):
            a = base[k % len(base)]
            pos = a.positions - a.positions.mean(axis=0)
            q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
            pos = pos @ q.T + rng.normal(scale=0.04, size=pos.shape)
            z = a.numbers
            e = sum(E_REF[int(x)] for x in z) + rng.normal(scale=0.05)
            f = rng.normal(scale=0.3, size=pos.shape)
            lines = [str(len(z)), f'Properties=species:S:1:pos:R:3:forces:R:3 energy={e:.8f} pbc="F F F"']
            lines += [f"{chemical_symbols[int(zi)]} {p[0]:.6f} {p[1]:.6f} {p[2]:.6f} {g[0]:.6f} {g[1]:.6f} {g[2]:.6f}"
                      for zi, p, g in zip(z, pos, f, strict=True)]
            fh.write("\n".join(lines) + "\n")


PEER = textwrap.dedent("""
    import sys
    import numpy as np
    import ase.io
    from ase.neighborlist import neighbor_list

    src, out, cutoff = sys.argv[1], sys.argv[2], float(sys.argv[3])
    z, pos, energy, forces, edges, counts = [], [], [], [], [], []
    for atoms in ase.io.iread(src, index=":", format="extxyz"):
        i, j = neighbor_list("ij", atoms, cutoff)
        z.append(atoms.numbers); pos.append(atoms.positions); forces.append(atoms.get_forces())
        energy.append(atoms.get_potential_energy()); edges.append(np.stack([j, i])); counts.append(len(atoms))
    np.savez(out, z=np.concatenate(z), pos=np.concatenate(pos), forces=np.concatenate(forces),
             energy=np.array(energy), edges=np.concatenate(edges, axis=1), counts=np.array(counts))
""")


def _run(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak resident bytes of one process (its own, through ``wait4``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.read().decode()[-3000:] if proc.stderr else "failed")
    return wall, int(usage.ru_maxrss) * 1024  # Linux: KiB


def ours(src: Path, work: Path, cutoff: float, shard_size: int) -> tuple[float, int]:
    cfg = {"output_dir": str(work / "graphs"), "datasets": [{"name": "demo-emt", "inputs": [str(src)],
                                                             "reader": "ase"}],
           "cutoff": cutoff, "seed": 0, "shard_size": shard_size}
    (work / "cfg.json").write_text(json.dumps(cfg))
    return _run([sys.executable, "-m", "models.preprocess", "--config", str(work / "cfg.json"), "--result",
                 str(work / "result.json")])


def peer(src: Path, work: Path, cutoff: float) -> tuple[float, int]:
    (work / "peer.py").write_text(PEER)
    return _run([sys.executable, str(work / "peer.py"), str(src), str(work / "peer.npz"), str(cutoff)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000],
                    help="structures per set (the issue's goal size is 1000000)")
    ap.add_argument("--cutoff", type=float, default=5.0)
    ap.add_argument("--shard-size", type=int, default=10_000,
                    help="graphs per store shard: what the app holds per split at most")
    ap.add_argument("--quick", action="store_true", help="sizes 2000 and 10000")
    args = ap.parse_args()
    sizes = [2_000, 10_000] if args.quick else sorted(args.sizes)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        for n in sizes:
            work = Path(tmp) / str(n)
            work.mkdir()
            src = work / "set.extxyz"
            write_set(src, n)
            t_ours, m_ours = ours(src, work, args.cutoff, args.shard_size)
            t_peer, m_peer = peer(src, work, args.cutoff)
            summary = json.loads((work / "result.json").read_text())
            kept = summary["datasets"]["demo-emt"]["kept"]
            rows.append({"structures": n, "kept": kept, "ours_per_s": n / t_ours, "peer_per_s": n / t_peer,
                         "ours_peak_mib": m_ours / 2**20, "peer_peak_mib": m_peer / 2**20})
            r = rows[-1]
            print(f"{n:>9,} structures ({kept:,} kept): ours {r['ours_per_s']:8.0f}/s {r['ours_peak_mib']:7.0f} MiB"
                  f" | peer {r['peer_per_s']:8.0f}/s {r['peer_peak_mib']:7.0f} MiB", flush=True)
            for p in work.iterdir():  # free the disk before the next size
                if p.is_file():
                    p.unlink()
    first, last = rows[0], rows[-1]
    print(json.dumps({
        "benchmark": "preprocess_scale", "unit": "structures/s per core",
        "structures": last["structures"], "ours": round(last["ours_per_s"], 1), "peer": round(last["peer_per_s"], 1),
        "ratio": round(last["ours_per_s"] / last["peer_per_s"], 3),
        "ours_peak_mib": [round(r["ours_peak_mib"]) for r in rows],
        "peer_peak_mib": [round(r["peer_peak_mib"]) for r in rows],
        "ours_memory_growth": round(last["ours_peak_mib"] / first["ours_peak_mib"], 3),
        "peer_memory_growth": round(last["peer_peak_mib"] / first["peer_peak_mib"], 3),
        "sizes": [r["structures"] for r in rows], "shard_size": args.shard_size,
    }))


if __name__ == "__main__":
    main()
