import itertools

import numpy as np
import pytest
from ase.build import bulk, fcc111

from models.data.graphs import radius_graph_pbc


def brute_force(pos, cell, pbc, cutoff):
    """Oracle: every (i, j, S) with |pos[j] - pos[i] + S @ cell| < cutoff, excluding self at S=0."""
    n = len(pos)
    reach = [int(np.ceil(cutoff / (np.abs(np.linalg.det(cell)) / np.linalg.norm(np.cross(*np.delete(cell, d, 0)))))) + 1
             if pbc[d] else 0 for d in range(3)]  # fmt: skip
    out = set()
    for s in itertools.product(*[range(-r, r + 1) for r in reach]):
        sv = np.array(s) @ cell
        for i in range(n):
            for j in range(n):
                if i == j and not any(s):
                    continue
                d = np.linalg.norm(pos[j] - pos[i] + sv)
                if d < cutoff:
                    out.add((i, j, *s))
    return out


@pytest.mark.parametrize("case", ["bulk", "slab", "small_cell", "molecule"])
def test_matches_brute_force(case):
    if case == "bulk":
        a = bulk("Cu", "fcc", cubic=True)
        a.rattle(0.1, seed=1)
    elif case == "small_cell":
        a = bulk("Al", "fcc")  # primitive cell, 1 atom, far below the cutoff: many images
    elif case == "slab":
        a = fcc111("Pt", size=(2, 2, 2), vacuum=4.0)
        a.pbc = (True, True, False)
        a.rattle(0.05, seed=2)
    else:
        a = bulk("Cu", "fcc", cubic=True)
        a.pbc = False
        a.cell[:] = 0
    ei, shift, dist = radius_graph_pbc(a.positions, a.cell.array, a.pbc, 4.0)
    got = {(int(i), int(j), *map(int, s)) for j, i, s in zip(ei[0], ei[1], shift, strict=True)}
    assert got == brute_force(a.positions, a.cell.array, a.pbc, 4.0)
    vec = a.positions[ei[0]] - a.positions[ei[1]] + shift @ a.cell.array
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), dist, atol=1e-10)


def test_max_neighbours_keeps_the_nearest():
    a = bulk("Cu", "fcc", cubic=True).repeat(2)
    a.rattle(0.1, seed=3)
    full_ei, _, full_d = radius_graph_pbc(a.positions, a.cell.array, a.pbc, 5.0)
    ei, _, d = radius_graph_pbc(a.positions, a.cell.array, a.pbc, 5.0, max_neighbours=6)
    for i in range(len(a)):
        mine = np.sort(d[ei[1] == i])
        assert len(mine) == 6
        np.testing.assert_allclose(mine, np.sort(full_d[full_ei[1] == i])[:6])


@pytest.mark.parametrize("natoms", [1, 2, 12, 32, 33, 60])
@pytest.mark.parametrize("max_neighbours", [None, 4])
def test_small_molecules_get_vesins_graph(monkeypatch, natoms, max_neighbours):
    """The all-pairs search of small molecules gives the graph vesin gives: same edges, same order, same shifts
    (zeros), distances to rounding. Positions include two atoms on one spot and a pair at the cutoff's edge."""
    import models.data.graphs as graphs

    rng = np.random.default_rng(natoms)
    pos = rng.uniform(0.0, 1.6 * natoms ** (1 / 3), size=(natoms, 3))
    if natoms > 2:
        pos[1] = pos[0]
        pos[2] = pos[0] + np.array([4.0 - 1e-9, 0.0, 0.0])
    args = (pos, np.zeros((3, 3)), np.zeros(3, dtype=bool), 4.0, max_neighbours)
    ours = radius_graph_pbc(*args)
    monkeypatch.setattr(graphs, "ALL_PAIRS_MAX_ATOMS", 0)
    reference = radius_graph_pbc(*args)
    assert ours[0].dtype == reference[0].dtype and ours[1].dtype == reference[1].dtype
    np.testing.assert_array_equal(ours[0], reference[0])
    np.testing.assert_array_equal(ours[1], reference[1])
    np.testing.assert_allclose(ours[2], reference[2], rtol=0, atol=1e-12)
    assert natoms == 1 or ours[0].shape[1] > 0
