"""The evaluation app on a model the training app wrote: its errors per dataset are the ones the ASE calculator
gives on the same test structures (an independent path: graphs rebuilt from the atoms, head chosen by name), the
parity file is what the report reads, and bad input is refused with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ase import Atoms

from campaign.report.data import _load_parity
from models import keys
from models.ase_calculator import ModelCalculator
from models.contracts.evaluate import EvaluateResult, parse_config
from models.contracts.train import parse_config as parse_train
from models.data.store import open_split
from models.evaluate import evaluate
from models.train import run

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from tests.models.train.conftest import TINY_PAINN
    from tests.models.train.emt_data import demo_root

    tmp = tmp_path_factory.mktemp("eval")
    root = demo_root(tmp / "stores")
    cfg = {"data_root": str(root), "datasets": ["metals", "molecules"], "batch_size": 4,
           "model": dict(TINY_PAINN), "epochs": 3, "precision": "fp64", "optimizer": {"lr": 0.005},
           "output_dir": str(tmp / "out"), "seed": 3}
    res = run(parse_train(cfg, "run.json"), "run.json")
    return {"root": root, "checkpoint": res["checkpoints"]["best"]["path"], "tmp": tmp}


def _atoms(store: Any, k: int) -> tuple[Atoms, float, np.ndarray, np.ndarray | None]:
    g = store.get_batch([k])
    cell = g[keys.CELL].reshape(3, 3).numpy()
    pbc = bool(np.abs(cell).sum() > 0)
    atoms = Atoms(numbers=g[keys.Z].numpy(), positions=g[keys.POS].numpy(), cell=cell, pbc=pbc)
    stress = g[keys.STRESS].reshape(3, 3).numpy() if bool(g[keys.HAS_STRESS].any()) else None
    return atoms, float(g[keys.ENERGY].reshape(-1)[0]), g[keys.FORCES].numpy(), stress


def test_errors_per_dataset_match_the_ase_calculator(trained: dict[str, Any]) -> None:
    cfg = parse_config({"checkpoint": trained["checkpoint"], "data_root": str(trained["root"]),
                        "datasets": ["metals", "molecules"], "batch_size": 4, "device": "cpu",
                        "output_dir": str(trained["tmp"] / "eval")}, "eval.json")
    result = EvaluateResult.model_validate({"status": "ok", **evaluate(cfg)})
    assert set(result.datasets) == {"metals", "molecules"} and not result.skipped
    for name, head in (("metals", 0), ("molecules", 1)):
        got = result.datasets[name]
        assert got.head == head and got.head_name == name
        store = open_split(trained["root"], name, "test")
        calc = ModelCalculator(trained["checkpoint"], head=name)
        e_err, f_err, s_err = [], [], []
        for k in range(len(store)):
            atoms, energy, forces, stress = _atoms(store, k)
            atoms.calc = calc
            e_err.append((atoms.get_potential_energy() - energy) / len(atoms))
            f_err.append((atoms.get_forces() - forces).ravel())
            if stress is not None:
                s_err.append((atoms.get_stress(voigt=False) - stress).ravel())
        e, f = np.array(e_err) * 1000, np.concatenate(f_err) * 1000  # meV/atom, meV/Å
        if name == "metals":  # periodic cells with stress labels; the molecules have none
            st = np.concatenate(s_err) * 1000  # meV/Å^3
            assert got.stress_graphs == len(store)
            assert got.stress_mae_mev_per_a3 == pytest.approx(np.abs(st).mean(), rel=1e-6)
        else:
            assert got.stress_graphs == 0 and got.stress_mae_mev_per_a3 is None
        assert got.graphs == len(store) and got.atoms == got.force_atoms
        assert got.energy_mae_mev_per_atom == pytest.approx(np.abs(e).mean(), rel=1e-6)
        assert got.energy_rmse_mev_per_atom == pytest.approx(np.sqrt((e * e).mean()), rel=1e-6)
        assert got.force_mae_mev_per_a == pytest.approx(np.abs(f).mean(), rel=1e-6)
        assert got.force_rmse_mev_per_a == pytest.approx(np.sqrt((f * f).mean()), rel=1e-6)
        assert got.energy_mae_mev_per_atom > 0 and got.force_mae_mev_per_a > 0
    # the parity file is the report's input, and holds the same errors
    assert result.parity is not None
    sets = {s.dataset: s for s in _load_parity(Path(result.parity.path), "model")}
    assert set(sets) == {"metals", "molecules"}
    for name, s in sets.items():
        mae = np.abs(s.energy_pred - s.energy_true).mean() * 1000
        assert mae == pytest.approx(result.datasets[name].energy_mae_mev_per_atom, rel=1e-9)
        assert s.force_true is not None and s.force_true.shape == (result.datasets[name].force_atoms, 3)


def test_parity_forces_are_capped_but_metrics_use_every_atom(trained: dict[str, Any]) -> None:
    cfg = parse_config({"checkpoint": trained["checkpoint"], "data_root": str(trained["root"]),
                        "datasets": ["metals"], "device": "cpu", "max_parity_atoms": 5,
                        "output_dir": str(trained["tmp"] / "capped")}, "eval.json")
    result = EvaluateResult.model_validate({"status": "ok", **evaluate(cfg)})
    assert result.parity is not None
    (s,) = _load_parity(Path(result.parity.path), "model")
    assert s.force_pred is not None and s.force_pred.shape == (5, 3)
    assert result.datasets["metals"].force_atoms > 5


def test_bad_input_exits_2_naming_the_field(trained: dict[str, Any], tmp_path: Path) -> None:
    config = tmp_path / "eval.json"
    config.write_text(json.dumps({"checkpoint": str(tmp_path / "missing.pt"), "data_root": str(trained["root"]),
                                  "datasets": ["metals"], "output_dir": str(tmp_path / "o")}))
    proc = subprocess.run([sys.executable, "-m", "models.evaluate", "--config", str(config), "--result",
                           str(tmp_path / "r.json")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "eval.json" in proc.stderr and "'checkpoint'" in proc.stderr and not (tmp_path / "r.json").exists()
    config.write_text(json.dumps({"checkpoint": trained["checkpoint"], "data_root": str(trained["root"]),
                                  "datasets": ["metals"], "output_dir": str(tmp_path / "o"), "split": "tset"}))
    proc = subprocess.run([sys.executable, "-m", "models.evaluate", "--config", str(config)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "split" in proc.stderr


@pytest.mark.gpu
def test_evaluation_on_cuda_matches_the_cpu(trained: dict[str, Any]) -> None:
    """The same figures on a CUDA device as on the CPU (fp64): device placement of the batches and results."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    figures = {}
    for device in ("cpu", "cuda"):
        cfg = parse_config({"checkpoint": trained["checkpoint"], "data_root": str(trained["root"]),
                            "datasets": ["metals", "molecules"], "device": device,
                            "output_dir": str(trained["tmp"] / f"eval-{device}")}, "eval.json")
        figures[device] = EvaluateResult.model_validate({"status": "ok", **evaluate(cfg)}).datasets
    for name, cpu in figures["cpu"].items():
        gpu = figures["cuda"][name]
        assert gpu.graphs == cpu.graphs and gpu.force_atoms == cpu.force_atoms
        assert gpu.energy_mae_mev_per_atom == pytest.approx(cpu.energy_mae_mev_per_atom, rel=1e-6)
        assert gpu.force_mae_mev_per_a == pytest.approx(cpu.force_mae_mev_per_a, rel=1e-6)
