"""Property-based tests (hypothesis): the recipe loader and the data readers either succeed or refuse with
their bad-input error naming the file; they never crash with anything else."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaign.recipe import Recipe, RecipeError, parse_recipe
from models.appio import BadInput
from models.data.readers import get_reader

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=8))
_keys = st.sampled_from(["campaign", "site", "name", "datasets", "stages", "hpo", "preprocess", "count", "shards",
                         "family", "search_space", "type", "low", "high", "choices", "cutoff", "split", "seed",
                         "workers", "nodes_per_trial", "profiles", "unknown", "database", "workdir"])
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                          st.dictionaries(_keys, inner, max_size=4)), max_leaves=12)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.dictionaries(_keys, _values, max_size=6))
def test_recipe_loader_accepts_or_names_the_problem(data: dict[str, object]) -> None:
    text = yaml.safe_dump(data, sort_keys=False)
    try:
        recipe = parse_recipe(text, "prop.yaml")
    except RecipeError as exc:
        assert exc.errors and str(exc).startswith("prop.yaml:")
        for _loc, line, _msg in exc.errors:
            assert line is None or 1 <= line <= max(1, text.count("\n") + 1)
    else:
        assert isinstance(recipe, Recipe) and len(recipe.hash()) == 64


@FAST
@given(st.text(max_size=200))
def test_recipe_loader_on_arbitrary_text(text: str) -> None:
    try:
        parse_recipe(text, "any.yaml")
    except RecipeError as exc:
        assert str(exc).startswith("any.yaml:")


@FAST
@given(st.integers(0, 3), st.integers(0, 40), st.binary(max_size=64))
def test_recipe_is_stable_under_reformatting(seed: int, count: int, _noise: bytes) -> None:
    base = {"campaign": "p", "seed": seed, "datasets": [{"name": "demo-emt", "count": count + 1}]}
    a = parse_recipe(yaml.safe_dump(base), "a.yaml")
    b = parse_recipe(yaml.safe_dump(base, default_flow_style=True), "b.yaml")
    assert a.hash() == b.hash()


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=512), st.sampled_from(["ase", "ani-hdf5", "ase-lmdb"]))
def test_readers_refuse_garbage_with_bad_input(blob: bytes, reader: str) -> None:
    suffix = {"ase": ".extxyz", "ani-hdf5": ".h5", "ase-lmdb": ".aselmdb"}[reader]
    opts = {"method": "wb97x_dz"} if reader == "ani-hdf5" else {}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"garbage{suffix}"
        path.write_bytes(blob)
        try:
            structures = list(get_reader(reader)(path, **opts))
        except BadInput as exc:
            assert str(path) in str(exc)
        else:
            for s in structures:
                assert np.isfinite(s.pos).all() and s.energy is not None


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.floats(-50, 50), st.integers(0, 2**16)), min_size=1, max_size=4))
def test_extxyz_roundtrip(frames: list[tuple[int, float, int]]) -> None:
    """Any labelled structures written as extxyz are read back with the same numbers, positions and labels."""
    import ase.io
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = []
    for n, energy, seed in frames:
        rng = np.random.default_rng(seed)
        a = Atoms(numbers=rng.integers(1, 30, n), positions=rng.uniform(0, 6, (n, 3)), cell=np.eye(3) * 8,
                  pbc=True)
        a.calc = SinglePointCalculator(a, energy=energy, forces=rng.normal(0, 1, (n, 3)))
        atoms.append(a)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.extxyz"
        ase.io.write(str(path), atoms, format="extxyz")
        got = list(get_reader("ase")(path))
    assert len(got) == len(atoms)
    for s, a in zip(got, atoms, strict=True):
        assert s.z.tolist() == a.numbers.tolist()
        assert np.allclose(s.pos, a.positions, atol=1e-6)
        assert np.isclose(s.energy, a.calc.results["energy"], atol=1e-6)
        assert np.allclose(s.forces, a.calc.results["forces"], atol=1e-6)
