"""The seeded candidate generator: deterministic by (seed, index), sizes in range, no overlapping atoms."""

from __future__ import annotations

import numpy as np
import pytest

from models.candidates import CandidateSpec, candidate, candidates, min_pair_distance_ratio


def test_candidates_depend_only_on_seed_and_index() -> None:
    spec = CandidateSpec(elements=("Cu", "Au", "Al"), min_atoms=2, max_atoms=40)
    whole = list(candidates(5, 0, 8, spec))
    parts = list(candidates(5, 0, 3, spec)) + list(candidates(5, 3, 5, spec))
    for a, b in zip(whole, parts, strict=True):
        assert np.array_equal(a.numbers, b.numbers) and np.array_equal(a.positions, b.positions)
        assert np.array_equal(a.cell[:], b.cell[:])
    other = candidate(6, 0, spec)
    assert not (len(other) == len(whole[0]) and np.allclose(other.positions, whole[0].positions))
    assert [a.info["structure_id"] for a in whole[:2]] == ["gen-5-0", "gen-5-1"]


@pytest.mark.parametrize("periodic", [True, False])
def test_sizes_elements_and_no_overlap(periodic: bool) -> None:
    spec = CandidateSpec(elements=("Ni", "Pt"), min_atoms=2, max_atoms=120, periodic=periodic)
    seen = set()
    for atoms in candidates(0, 0, 25, spec):
        assert 2 <= len(atoms) <= 120
        assert set(atoms.get_chemical_symbols()) <= {"Ni", "Pt"}
        assert bool(atoms.pbc.all()) is periodic
        assert min_pair_distance_ratio(atoms) >= spec.overlap
        seen.add(len(atoms))
    assert len(seen) > 5  # sizes really vary


def test_tiny_cells_keep_atoms_clear_of_their_images() -> None:
    spec = CandidateSpec(elements=("Au",), min_atoms=1, max_atoms=3)
    for atoms in candidates(1, 0, 30, spec):
        assert min(atoms.cell.lengths()) >= 2 * spec.overlap * 1.36


def test_bad_spec_is_refused() -> None:
    with pytest.raises(ValueError, match="Xx"):
        CandidateSpec(elements=("Xx",))
    with pytest.raises(ValueError, match="min_atoms"):
        CandidateSpec(min_atoms=5, max_atoms=2)
