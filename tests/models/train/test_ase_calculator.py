"""The ASE calculator over checkpoints the training app wrote, tested the way users use it: forces and stress
are the energy's derivatives (finite differences), a BFGS relaxation and a cell relaxation converge, NVE
molecular dynamics in fp64 conserves energy, and an ensemble reports its spread."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.filters import FrechetCellFilter
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

from models import checkpoint
from models.ase_calculator import ModelCalculator
from models.contracts.train import parse_config
from models.train import run


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny PaiNN trained by the app (fp64, 4 epochs) on EMT metals (head 0) and molecules (head 1)."""
    from tests.models.train.conftest import TINY_PAINN
    from tests.models.train.emt_data import demo_root

    tmp = tmp_path_factory.mktemp("calc")
    cfg = {"data_root": str(demo_root(tmp / "stores")), "datasets": ["metals", "molecules"], "batch_size": 4,
           "model": dict(TINY_PAINN), "epochs": 4, "precision": "fp64", "optimizer": {"lr": 0.005},
           "scheduler": {"kind": "cosine", "warmup_steps": 2}, "output_dir": str(tmp / "out"), "seed": 3}
    return run(parse_config(cfg, "run.json"), "run.json")


def copper(repeat: int = 1, rattle: float = 0.05) -> Any:
    atoms = bulk("Cu", "fcc", a=3.65, cubic=True).repeat(repeat)
    atoms.rattle(stdev=rattle, seed=1)
    return atoms


def test_the_checkpoint_names_its_heads_and_graphs(trained: dict[str, Any]) -> None:
    best = checkpoint.load(trained["checkpoints"]["best"]["path"])
    assert best["head_names"] == {"0": "metals", "1": "molecules"}
    assert best["graph"] == {"cutoff": 5.0, "max_neighbours": None}  # the stores' graphs (the model cuts at 4 Å)
    calc = ModelCalculator(trained["checkpoints"]["best"]["path"], head="metals")
    assert calc.head_ids == [0]
    with pytest.raises(ValueError, match=r"no head for dataset 'water'.*metals \(0\), molecules \(1\)"):
        ModelCalculator(trained["checkpoints"]["best"]["path"], head="water")


def test_forces_and_stress_are_the_energy_s_derivatives(trained: dict[str, Any]) -> None:
    calc = ModelCalculator(trained["checkpoints"]["best"]["path"], head="metals")
    atoms = copper()
    atoms.calc = calc
    forces, stress = atoms.get_forces(), atoms.get_stress(voigt=False)
    h = 1e-4
    for a, k in ((0, 0), (1, 2), (3, 1)):  # F = -dE/dR
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[a, k] += h
        minus.positions[a, k] -= h
        plus.calc = minus.calc = calc
        fd = -(plus.get_potential_energy() - minus.get_potential_energy()) / (2 * h)
        assert forces[a, k] == pytest.approx(fd, abs=1e-6)
    volume = atoms.get_volume()
    for i, j in ((0, 0), (1, 1), (0, 1), (1, 2)):  # sigma = (1/V) dE/d(strain)
        energies = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[i, j] += sign * h / (2 if i != j else 1)
            strain[j, i] += sign * h / 2 if i != j else 0
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
            strained.calc = calc
            energies.append(strained.get_potential_energy())
        fd = (energies[0] - energies[1]) / (2 * h) / volume
        assert stress[i, j] == pytest.approx(fd, abs=1e-6)


def test_a_bfgs_relaxation_converges(trained: dict[str, Any]) -> None:
    atoms = copper(rattle=0.1)
    atoms.calc = ModelCalculator(trained["checkpoints"]["best"]["path"], head="metals")
    e0 = atoms.get_potential_energy()
    assert BFGS(atoms, logfile=None).run(fmax=0.01, steps=300)
    assert np.abs(atoms.get_forces()).max() < 0.01 and atoms.get_potential_energy() < e0


def test_a_cell_relaxation_converges(trained: dict[str, Any]) -> None:
    atoms = copper(rattle=0.05)
    atoms.calc = ModelCalculator(trained["checkpoints"]["best"]["path"], head="metals")
    e0 = atoms.get_potential_energy()
    assert BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=0.01, steps=300)
    assert np.abs(atoms.get_stress()).max() * atoms.get_volume() / len(atoms) < 0.01  # eV per atom
    assert atoms.get_potential_energy() < e0


def test_nve_dynamics_conserves_energy_in_fp64(trained: dict[str, Any]) -> None:
    """200 steps of 1 fs, 2x2x2 Cu cell (32 atoms) at 300 K, velocity Verlet: total energy drift per atom."""
    atoms = copper(repeat=2, rattle=0.02)
    atoms.calc = ModelCalculator(trained["checkpoints"]["best"]["path"], head="metals", precision="fp64")
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    totals = []
    dyn.attach(lambda: totals.append(atoms.get_total_energy()), interval=10)
    dyn.run(200)
    drift_per_atom = abs(totals[-1] - totals[0]) / len(atoms)
    fluctuation = (max(totals) - min(totals)) / len(atoms)
    assert drift_per_atom < 1e-4 and fluctuation < 1e-3, (drift_per_atom, fluctuation)


def test_an_ensemble_reports_its_spread(trained: dict[str, Any]) -> None:
    paths = [trained["checkpoints"]["best"]["path"], trained["checkpoints"]["last"]["path"]]
    ens = ModelCalculator(paths, head="metals")
    atoms = copper()
    atoms.calc = ens
    e = atoms.get_potential_energy()
    members = ens.results["energies_members"]
    assert e == pytest.approx(members.mean()) and ens.results["energy_std"] == pytest.approx(members.std())
    assert ens.results["forces_std"].shape == (len(atoms), 3)
    singles = [ModelCalculator(p, head="metals").get_potential_energy(copper()) for p in paths]
    np.testing.assert_allclose(members, singles, rtol=1e-12)  # each member as evaluated on its own
    assert e == pytest.approx(float(np.mean(singles)))
