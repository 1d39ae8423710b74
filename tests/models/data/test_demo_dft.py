"""The optional PySCF demo subset (demo-dft): real B3LYP labels of the small xTB-demo molecules."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ase.io
import numpy as np
import pytest

from models.appio import BadInput
from models.data.demo import DFT_ELEMENTS, DFT_MAX_ATOMS, dft_subset_indices, molecule_structure
from models.demo import run as run_demo
from models.registry import load_registry


def test_registry_entry_and_subset_are_the_small_xtb_molecules() -> None:
    info = load_registry().get("demo-dft")
    assert info.is_demo and info.generator["kind"] == "dft" and info.fidelity == "dft-hybrid"
    assert info.head_id not in {
        load_registry().get(n).head_id for n in ("demo-emt", "demo-gfn2", "demo-gfn1")
    }
    idx = dft_subset_indices(0, 0, 6)
    assert idx == sorted(idx) and len(set(idx)) == 6
    assert dft_subset_indices(0, 2, 4) == idx[2:]  # shards over index ranges add up to one run
    for j in idx:
        atoms = molecule_structure(0, j)
        assert len(atoms) <= DFT_MAX_ATOMS and set(atoms.numbers.tolist()) <= DFT_ELEMENTS


@pytest.mark.skipif(importlib.util.find_spec("pyscf") is not None, reason="pyscf is installed")
def test_without_pyscf_the_app_says_which_extra(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"campaign\[dft\]"):
        run_demo({"dataset": "demo-dft", "output": "d.extxyz", "count": 1}, tmp_path / "c.json")
    assert not (tmp_path / "d.extxyz").exists()


@pytest.mark.slow
def test_app_writes_b3lyp_labels_of_the_xtb_geometries(tmp_path: Path) -> None:
    pytest.importorskip("pyscf")
    res = run_demo({"dataset": "demo-dft", "output": "d.extxyz", "seed": 0, "count": 2}, tmp_path / "c.json")
    assert res["count"] == 2 and res["head_id"] == load_registry().get("demo-dft").head_id
    frames = ase.io.read(res["output"], ":")
    gfn_geoms = [molecule_structure(0, j) for j in dft_subset_indices(0, 0, 2)]
    for atoms, ref in zip(frames, gfn_geoms, strict=True):
        np.testing.assert_allclose(atoms.positions, ref.positions, atol=1e-6)  # the xTB demo's geometry
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        # B3LYP total energies of these molecules: about -1000 eV (CH4) … -12000 eV (CF4)
        assert -13000.0 < energy < -500.0
        assert forces.shape == (len(atoms), 3) and np.isfinite(forces).all()
        np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=5e-3)  # translational invariance


def test_dft_label_energy_and_forces_are_consistent() -> None:
    pytest.importorskip("pyscf")
    from ase.build import molecule
    from ase.units import Hartree

    from models.data.demo import dft_label

    water = molecule("H2O")
    water.positions[1] += (0.05, 0.0, 0.02)  # off equilibrium: non-zero forces
    # a cheap level keeps this in the default tier; the app's B3LYP/6-31G* is in the slow test
    atoms = dft_label(water.copy(), xc="HF", basis="sto-3g")
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    assert energy == pytest.approx(-74.96 * Hartree, abs=0.03 * Hartree)  # HF/STO-3G water ≈ -74.96 Ha
    assert np.abs(forces).max() > 0.05
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=5e-3)
    h = 1e-3  # the force is the negative gradient of the energy (finite differences, eV/Å)
    for atom, axis in ((1, 0), (0, 2)):
        plus, minus = water.copy(), water.copy()
        plus.positions[atom, axis] += h
        minus.positions[atom, axis] -= h
        e_plus = dft_label(plus, xc="HF", basis="sto-3g").get_potential_energy()
        e_minus = dft_label(minus, xc="HF", basis="sto-3g").get_potential_energy()
        assert -(e_plus - e_minus) / (2 * h) == pytest.approx(forces[atom, axis], abs=1e-2)
