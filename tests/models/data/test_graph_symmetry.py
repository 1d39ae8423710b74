"""A neighbour cap must not break a crystal's symmetry (issue: `max_neighbours: 24` with a 5 Å cutoff gave a
perfect fcc Cu crystal forces up to 0.06 eV/Å, an anisotropic stress and a supercell-dependent energy).

fcc Cu (a = 3.61 Å) has shells of 12, 6, 24 and 12 neighbours at 2.55, 3.61, 4.42 and 5.11 Å: within 5 Å a cap
of 24 falls inside the third shell. The graph is built as the screening and preprocessing apps build it
(:func:`models.data.graphs.radius_graph_pbc`); a model of random weights, in fp64, is then evaluated on it
exactly as screening does. Physics, not numbers of our own: a perfect crystal has zero forces by symmetry, a
cubic one an isotropic stress, and its energy per atom cannot depend on the supercell it is written in.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from models import keys
from models.data.graphs import cap_neighbours, radius_graph_pbc
from models.nn import build_model
from models.screen import block_from_atoms
from tests.models.nn.emt_graphs import tiny_config

CUTOFF, CAP = 5.0, 24


def cu(n: int) -> object:
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat((n, n, n))


def evaluate(atoms_list: list, max_neighbours: int | None) -> list[dict[str, np.ndarray]]:
    torch.manual_seed(0)
    model = build_model({**tiny_config("painn", cutoff=CUTOFF), "heads": [0]}).double().eval()
    out = []
    for atoms in atoms_list:
        batch = block_from_atoms([(atoms, 0, "cu")], CUTOFF, max_neighbours).to_batch()
        batch[keys.POS] = batch[keys.POS].double()
        batch[keys.CELL] = batch[keys.CELL].double()
        pred = model(batch, forces=True, stress=True)
        out.append({k: pred[k].detach().numpy() for k in ("energy", "forces", "stress")})
    return out


def test_the_cap_keeps_whole_shells() -> None:
    atoms = cu(1)
    ei, _, dist = radius_graph_pbc(atoms.positions, atoms.cell.array, atoms.pbc, CUTOFF, CAP)
    per_centre = np.bincount(ei[1], minlength=len(atoms))
    assert per_centre.tolist() == [12 + 6 + 24] * 4  # the third shell kept whole, not cut at 24
    assert np.allclose(sorted(set(np.round(dist, 6))), [3.61 / np.sqrt(2), 3.61, 3.61 * np.sqrt(1.5)])
    uncapped, _, _ = radius_graph_pbc(atoms.positions, atoms.cell.array, atoms.pbc, CUTOFF, None)
    assert uncapped.shape == ei.shape
    between, _, _ = radius_graph_pbc(atoms.positions, atoms.cell.array, atoms.pbc, CUTOFF, 18)
    assert np.bincount(between[1]).tolist() == [18] * 4  # a cap between two shells is met exactly


@pytest.mark.parametrize("cap", [None, CAP, 13])
def test_a_perfect_crystal_has_no_forces_an_isotropic_stress_and_one_energy_per_atom(cap: int | None) -> None:
    small, large = evaluate([cu(1), cu(2)], cap)
    assert np.abs(small["forces"]).max() < 1e-10 and np.abs(large["forces"]).max() < 1e-10
    stress = large["stress"][0]
    assert np.abs(stress - np.diag(np.diag(stress))).max() < 1e-10
    assert np.ptp(np.diag(stress)) < 1e-10
    np.testing.assert_allclose(small["energy"][0] / 4, large["energy"][0] / 32, rtol=1e-12)


def test_the_check_fails_on_a_cap_that_splits_a_shell() -> None:
    """The same crystal with its third shell cut at 24 neighbours (the old behaviour, kept here as a rank cut):
    the checks above would fail, so they test what they claim."""
    atoms = cu(1)
    ei, shift, dist = radius_graph_pbc(atoms.positions, atoms.cell.array, atoms.pbc, CUTOFF, None)
    i, j, s, _ = cap_neighbours(ei[1], ei[0], shift, dist, None)
    start = np.flatnonzero(np.r_[True, i[1:] != i[:-1]])
    rank = np.arange(i.size) - np.repeat(start, np.diff(np.r_[start, i.size]))
    keep = rank < CAP
    torch.manual_seed(0)
    model = build_model({**tiny_config("painn", cutoff=CUTOFF), "heads": [0]}).double().eval()
    batch = block_from_atoms([(atoms, 0, "cu")], CUTOFF, None).to_batch()
    batch[keys.POS] = batch[keys.POS].double()
    batch[keys.CELL] = batch[keys.CELL].double()
    batch[keys.EDGE_INDEX] = torch.as_tensor(np.stack([j[keep], i[keep]]))
    batch[keys.SHIFT] = torch.as_tensor(s[keep]).to(batch[keys.SHIFT].dtype)
    forces = model(batch, forces=True)["forces"].detach().numpy()
    assert np.abs(forces).max() > 1e-6
