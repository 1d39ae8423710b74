"""The ANI-layout reader on files in the publishers' layouts of ANI-1x and Transition1x
(tests/models/data/ani_layout.py cites them): every conformer at the level of theory asked, in eV and Å, NaN
levels as unlabelled, and every Transition1x configuration (path images, reactant, product, transition state)
read once although the split groups name the reactions again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.data.readers import read_structures
from models.registry import load_registry
from tests.models.data.ani_layout import write_ani1x, write_transition1x


def test_ani1x_two_levels_of_theory_in_ev(tmp_path: Path) -> None:
    path = tmp_path / "ani1x-release.h5"
    truth = write_ani1x(path)
    reg = load_registry()
    dft = list(read_structures("ani-hdf5", path, units=reg.get("ani1x").units, **reg.get("ani1x").reader_options))
    assert [(s.origin.split(":")[1]) for s in dft] == [f"{g}[{c}]" for g, c, _, _ in truth["dft"]]
    for s, (_, _, e, f) in zip(dft, truth["dft"], strict=True):
        assert s.energy == pytest.approx(e, rel=1e-12)
        np.testing.assert_allclose(s.forces, f, rtol=1e-10, atol=1e-12)
    cc_info = reg.get("ani1x-ccsdt")
    cc = list(read_structures("ani-hdf5", path, units=cc_info.units, **cc_info.reader_options))
    labelled = [(s.origin.split(":")[1], s.energy) for s in cc if s.energy is not None]
    assert labelled == [(f"{g}[{c}]", pytest.approx(e, rel=1e-12)) for g, c, e in truth["cc"]]
    assert sum(s.energy is None for s in cc) == len(truth["dft"]) - len(truth["cc"]) and all(
        s.forces is None for s in cc)


@pytest.mark.parametrize("copy_splits", [False, True])
def test_transition1x_reads_every_configuration_once(tmp_path: Path, copy_splits: bool) -> None:
    path = tmp_path / "Transition1x.h5"
    truth = write_transition1x(path, copy_splits=copy_splits)
    info = load_registry().get("transition1x")
    got = list(read_structures("ani-hdf5", path, units=info.units, **info.reader_options))
    assert len(got) == len(truth) == 12
    by_origin = {s.origin.split(":", 1)[1]: s for s in got}
    assert sorted(by_origin) == sorted(key for key, _, _ in truth)  # under data/, each once
    for key, pos, e in truth:
        assert by_origin[key].energy == pytest.approx(e, rel=1e-12)
        np.testing.assert_allclose(by_origin[key].pos, pos, rtol=1e-12)
