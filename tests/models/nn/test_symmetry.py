"""Every family: invariant energies, equivariant forces, conservative forces and stress (fp64, tiny models)."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch_geometric.data import Batch

from models import keys
from models.nn import FAMILIES, build_model
from tests.models.nn.emt_graphs import atoms_to_data, cu_cell, mixed_batch, tiny_config

#: Every family, and the architectural options that change the physics path (``family:option``).
VARIANTS = [*FAMILIES, "painn:gaussian"]


@functools.cache
def _model(variant: str) -> torch.nn.Module:
    """One tiny fp64 model per variant, shared by the tests of this module (they do not modify it)."""
    family, _, option = variant.partition(":")
    torch.manual_seed(0)
    cfg = tiny_config(family) | ({"radial_basis": option} if option else {})
    return build_model(cfg).double().eval()


def _rotation(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.linalg.det(q))


@pytest.fixture(scope="module")
def batch() -> Batch:
    return mixed_batch()


@pytest.mark.parametrize("family", VARIANTS)
def test_rotation_translation(family: str, batch: Batch) -> None:
    model = _model(family)
    ref = model(batch, stress=True)
    assert ref["forces"].abs().max() > 1e-6, "forces must not vanish (the test would be vacuous)"
    rot = _rotation(7)
    moved = batch.clone()
    moved.pos = batch.pos @ rot.T + torch.tensor([1.3, -0.4, 2.2], dtype=torch.float64)
    moved.cell = batch.cell @ rot.T
    out = model(moved, stress=True)
    torch.testing.assert_close(out["energy"], ref["energy"], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out["forces"], ref["forces"] @ rot.T, rtol=1e-8, atol=1e-9)
    per = batch.pbc.any(dim=1)
    torch.testing.assert_close(out["stress"][per], rot @ ref["stress"][per] @ rot.T, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("family", VARIANTS)
def test_permutation(family: str, batch: Batch) -> None:
    model = _model(family)
    ref = model(batch)
    n = batch.num_nodes
    # permute atoms inside each graph (graphs stay contiguous, as PyG batches require)
    perm = torch.cat([torch.randperm(int(c), generator=torch.Generator().manual_seed(3)) + int(s)
                      for s, c in zip(batch.ptr[:-1], batch.natoms, strict=True)])
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    moved = batch.clone()
    for key in (keys.POS, keys.Z, keys.FORCES, keys.BATCH):
        moved[key] = batch[key][perm]
    moved.edge_index = inv[batch.edge_index]
    eperm = torch.randperm(batch.num_edges, generator=torch.Generator().manual_seed(4))
    moved.edge_index, moved.shift = moved.edge_index[:, eperm], batch.shift[eperm]
    out = model(moved)
    torch.testing.assert_close(out["energy"], ref["energy"], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out["forces"], ref["forces"][perm], rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("family", VARIANTS)
def test_forces_match_finite_differences(family: str, batch: Batch) -> None:
    model = _model(family)
    forces = model(batch)["forces"]
    h = 1e-5
    gen = torch.Generator().manual_seed(5)
    for _ in range(4):
        a, c = int(torch.randint(batch.num_nodes, (1,), generator=gen)), int(torch.randint(3, (1,), generator=gen))
        energies = []
        for sign in (1.0, -1.0):
            moved = batch.clone()
            moved.pos = batch.pos.clone()
            moved.pos[a, c] += sign * h
            energies.append(model(moved, forces=False)["energy"].sum())
        fd = -(energies[0] - energies[1]) / (2 * h)
        assert math.isclose(float(fd), float(forces[a, c]), rel_tol=1e-5, abs_tol=1e-7), (a, c, fd, forces[a, c])


@pytest.mark.parametrize("family", VARIANTS)
def test_stress_matches_strain_finite_differences(family: str) -> None:
    model = _model(family)
    batch = Batch.from_data_list([atoms_to_data(cu_cell(seed=11), 4.0, head=0)])
    stress = model(batch, stress=True)["stress"][0]
    assert stress.abs().max() > 1e-7
    vol = float(torch.linalg.det(batch.cell[0]).abs())
    h = 1e-5
    for a, b in ((0, 0), (1, 2), (2, 2), (0, 1)):
        energies = []
        for sign in (1.0, -1.0):
            strain = torch.zeros(3, 3, dtype=torch.float64)
            if a == b:
                strain[a, a] = sign * h
            else:
                strain[a, b] = strain[b, a] = sign * h / 2
            deform = torch.eye(3, dtype=torch.float64) + strain
            moved = batch.clone()
            moved.pos, moved.cell = batch.pos @ deform, batch.cell @ deform
            energies.append(float(model(moved, forces=False)["energy"][0]))
        fd = (energies[0] - energies[1]) / (2 * h) / vol
        assert math.isclose(fd, float(stress[a, b]), rel_tol=1e-5, abs_tol=1e-8), (a, b, fd, stress[a, b])


@pytest.mark.parametrize("family", VARIANTS)
def test_energy_blind_to_edges_beyond_cutoff(family: str) -> None:
    """Edges longer than the model cutoff (the data may have a larger one) change nothing."""
    model = _model(family)
    small = Batch.from_data_list([atoms_to_data(cu_cell(seed=2), 4.0, head=1)])
    large = Batch.from_data_list([atoms_to_data(cu_cell(seed=2), 5.5, head=1)])
    assert large.num_edges > small.num_edges
    a, b = model(small), model(large)
    torch.testing.assert_close(a["energy"], b["energy"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(a["forces"], b["forces"], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", [f for f in VARIANTS if f != "pna"])
def test_energy_smooth_at_cutoff(family: str) -> None:
    """A dimer just inside the cutoff has the energy and force of two isolated atoms (smooth envelope)."""
    from ase import Atoms

    model = _model(family)
    rc = 4.0

    def dimer(d: float) -> Batch:
        return Batch.from_data_list([atoms_to_data(Atoms("Cu2", positions=[[0, 0, 0], [d, 0, 0]]), 5.0, head=0)])

    inside, outside = model(dimer(rc - 1e-4)), model(dimer(rc + 1e-4))
    assert dimer(rc - 1e-4).num_edges == 2
    torch.testing.assert_close(inside["energy"], outside["energy"], rtol=0, atol=1e-6)
    torch.testing.assert_close(inside["forces"], outside["forces"], rtol=0, atol=1e-4)
