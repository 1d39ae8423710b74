"""The Alexandria reader on a file in the publisher's layout (tests/models/data/alexandria_layout.py cites it):
every ionic step of every calculation, bzip2 as published, kBar stresses to eV/Å^3 in ASE's sign, the energy
chosen explicitly, the other download (relaxed entries) and malformed steps named, and the registry entry."""

from __future__ import annotations

import bz2
import json
from pathlib import Path

import numpy as np
import pytest

from models.appio import BadInput
from models.data.readers import read_structures
from models.formats import file_problem
from models.registry import load_registry
from tests.models.data.alexandria_layout import write_alexandria


def test_steps_read_in_ev_angstrom_and_ase_stress(tmp_path: Path) -> None:
    path = tmp_path / "alexandria_000.json.bz2"
    truth = write_alexandria(path)
    info = load_registry().get("alexandria")
    assert info.reader == "alexandria-json" and dict(info.reader_options) == {"energy": "uncorrected"}
    assert file_problem(path, "alexandria-json") is None
    got = list(read_structures("alexandria-json", path, units=info.units, **info.reader_options))
    assert [s.origin.split(":", 1)[1] for s in got] == [t["id"] for t in truth]
    for s, t in zip(got, truth, strict=True):
        assert s.z.tolist() == t["numbers"] and s.pbc.all()
        assert s.energy == pytest.approx(t["energy"], abs=1e-12)
        np.testing.assert_allclose(s.cell, t["cell"], atol=1e-12)
        np.testing.assert_allclose(s.pos, t["pos"], atol=1e-12)
        np.testing.assert_allclose(s.forces, t["forces"], atol=1e-12)
        np.testing.assert_allclose(s.stress, t["stress"], atol=1e-10)  # back to eV/Å^3, tensile positive


def test_the_energy_choice_is_explicit_and_the_other_download_is_named(tmp_path: Path) -> None:
    path = tmp_path / "a.json.bz2"
    write_alexandria(path)
    with pytest.raises(BadInput, match="option 'energy' must be 'uncorrected'"):
        list(read_structures("alexandria-json", path, energy="corrected"))
    entries = tmp_path / "alexandria_000.json.bz2"  # the relaxed ComputedStructureEntry download
    entries.write_bytes(bz2.compress(json.dumps({"@module": "pymatgen.entries.computed_entries",
                                                 "entries": [{"energy": -3.0, "structure": {}}]}).encode()))
    with pytest.raises(BadInput, match="relaxed-entries file"):
        list(read_structures("alexandria-json", entries, energy="uncorrected"))


def test_malformed_steps_are_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.json.bz2"
    write_alexandria(path)
    data = json.loads(bz2.decompress(path.read_bytes()))
    data["agm002153473"][0]["steps"][1]["forces"] = [[0.0, 0.0]]
    path.write_bytes(bz2.compress(json.dumps(data).encode()))
    with pytest.raises(BadInput, match=r"bad.json.bz2:agm002153473/0/1: field 'forces' has shape \(1, 2\)"):
        list(read_structures("alexandria-json", path, energy="uncorrected"))
    truncated = tmp_path / "truncated.json.bz2"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(BadInput, match=r"truncated.json.bz2: cannot read after 0 steps \(Compressed file ended"):
        list(read_structures("alexandria-json", truncated, energy="uncorrected"))
    (tmp_path / "page.json").write_text("<html>")
    assert file_problem(tmp_path / "page.json", "alexandria-json") == \
        "not a JSON object (Alexandria JSON starts with '{')"
