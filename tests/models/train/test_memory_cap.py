"""Training on a store several times larger than the memory each rank may use.

The store is what the preprocessing app writes from an extxyz file of EMT-labelled 256-atom Cu cells, graphs
within 10 Å (~93,000 edges a cell, ~1.9 MB): over 1.5 GiB. Each of two ranks runs ``models.train`` in its own
memory cgroup capped at 512 MiB (:mod:`tests.models.train.memory_cap`). With the default ``data_in_memory:
share`` each rank sees that its share (~0.75 GiB) does not fit the room its cgroup leaves, reads every batch from
the store's files (built ahead by the loader's prefetch thread), trains and validates. Holding the store
(``all``) under the same cap gets the rank killed by the kernel: the cap bites, and the store does not fit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from models.registry import load_registry
from tests.models.train.memory_cap import MemoryCap, why_no_cap

pytestmark = [pytest.mark.slow, pytest.mark.skipif(why_no_cap() is not None, reason=str(why_no_cap()))]

CAP_BYTES = 512 << 20
CUTOFF = 10.0
CELLS = 920
REPO = Path(__file__).resolve().parents[3]


def _cell(k: int) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, np.ndarray]:
    atoms = bulk("Cu", "fcc", a=3.61 * (0.98 + 0.04 * (k % 11) / 10), cubic=True).repeat((4, 4, 4))
    atoms.rattle(stdev=0.05, seed=k)
    atoms.calc = EMT()
    return (atoms.positions, np.asarray(atoms.cell[:]), float(atoms.get_potential_energy()), atoms.get_forces(),
            atoms.get_stress())


def _write_cells(path: Path) -> None:
    template = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((4, 4, 4))
    with Pool(2) as pool:
        labelled = pool.map(_cell, range(CELLS), chunksize=20)
    frames = []
    for pos, cell, energy, forces, stress in labelled:
        atoms = template.copy()
        atoms.set_cell(cell)
        atoms.positions = pos
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)
        frames.append(atoms)
    write(path, frames, format="extxyz")


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.preprocess import run

    root = tmp_path_factory.mktemp("big")
    _write_cells(root / "cu.extxyz")
    cfg = {"output_dir": str(root / "stores"), "datasets": [{"name": "demo-emt", "inputs": [str(root / "cu.extxyz")]}],
           "cutoff": CUTOFF, "max_neighbours": None, "split": {"train": 0.95, "val": 0.05, "test": 0.0}}
    summary = run(cfg, root / "pre.json")
    assert summary["datasets"]["demo-emt"]["kept"] == CELLS
    (root / "cu.extxyz").unlink()
    return root / "stores"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train(store: Path, out: Path, ranks: int, mode: str) -> tuple[list[int], list[MemoryCap], dict[str, Any] | None]:
    """``models.train`` on ``ranks`` ranks, each in its own capped cgroup; (return codes, caps, rank 0's result)."""
    head = load_registry().get("demo-emt").head_id
    cfg = {"data_root": str(store), "datasets": ["demo-emt"], "batch_size": 1, "epochs": 1, "max_steps": 4,
           "precision": "fp32", "device": "cpu", "threads": 1, "data_in_memory": mode, "seed": 0,
           "model": {"family": "painn", "hidden": 8, "layers": 1, "cutoff": CUTOFF, "num_rbf": 8, "heads": [head],
                     "max_z": 30},
           "output_dir": str(out / "run")}
    out.mkdir()
    (out / "cfg.json").write_text(json.dumps(cfg))
    port = _free_port()
    caps = [MemoryCap(CAP_BYTES) for _ in range(ranks)]
    procs = []
    with contextlib.ExitStack() as files:
        for r in range(ranks):
            env = {**os.environ, "RANK": str(r), "WORLD_SIZE": str(ranks), "LOCAL_RANK": str(r),
                   "LOCAL_WORLD_SIZE": str(ranks), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                   "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "models.train", "--config", str(out / "cfg.json"), "--result",
                 str(out / "result.json")], cwd=REPO, env=env, preexec_fn=caps[r].join,
                stdout=subprocess.DEVNULL, stderr=files.enter_context(open(out / f"rank{r}.err", "w"))))
        try:
            codes = [p.wait(timeout=900) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
                    p.wait()
    result = json.loads((out / "result.json").read_text()) if (out / "result.json").is_file() else None
    return codes, caps, result


def test_a_store_several_times_the_cap_trains_from_the_files(big_store: Path, tmp_path: Path) -> None:
    store_bytes = sum(p.stat().st_size for p in (big_store / "demo-emt").rglob("*") if p.is_file())
    assert store_bytes >= 3 * CAP_BYTES, f"store of {store_bytes / 2**30:.2f} GiB"

    codes, caps, result = _train(big_store, tmp_path / "share", 2, "share")
    try:
        errs = [(tmp_path / "share" / f"rank{r}.err").read_text() for r in range(2)]
        assert codes == [0, 0], "".join(e[-2000:] for e in errs)
        assert all(f"rank {r}'s share of the data" in errs[r] and "read from the stores' files" in errs[r]
                   for r in range(2))
        # held: the per-graph layout and labels only (~200 bytes a graph), no atom or edge row
        assert result is not None and result["steps"] == 4 and result["data_bytes"] < (1 << 20)
        assert np.isfinite(result["best_val_loss"])
        assert all(c.oom_kills == 0 for c in caps)
        print(f"store {store_bytes / 2**30:.2f} GiB, cap {CAP_BYTES >> 20} MiB per rank; rank peaks "
              f"{[c.peak_bytes >> 20 for c in caps]} MiB; data wait {100 * result['data_wait_fraction']:.2f} % of "
              f"step time; {result['train_graphs_per_s']:.2f} graphs/s")
    finally:
        for c in caps:
            c.remove()

    codes, caps, result = _train(big_store, tmp_path / "all", 1, "all")
    try:
        assert codes == [-signal.SIGKILL] and caps[0].oom_kills >= 1 and result is None
    finally:
        caps[0].remove()
