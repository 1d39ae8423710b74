"""The MPtrj reader on files in the publisher's layout (tests/models/data/mptrj_layout.py cites it): plain and
gzip, uncorrected or corrected energies as asked, stresses converted from VASP's kBar to ASE's eV/Å^3 sign,
malformed frames named, and the preprocessing app reading it through the registry's default reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.appio import BadInput
from models.data.readers import read_structures
from models.formats import sniff
from models.registry import load_registry
from tests.models.data.mptrj_layout import truth, write_mptrj


@pytest.mark.parametrize("compress", [False, True])
def test_frames_as_published_read_in_ase_units(tmp_path: Path, compress: bool) -> None:
    path = tmp_path / ("MPtrj_2022.9_full.json" + (".gz" if compress else ""))
    frames = write_mptrj(path, compress)
    info = load_registry().get("mptrj")
    assert info.reader == "mptrj-json" and info.reader_options == {"energy": "uncorrected"}
    assert sniff(path, "mptrj-json") is None
    got = list(read_structures("mptrj-json", path, units=info.units, **info.reader_options))
    want = truth(frames)
    assert [s.origin.rsplit(":", 1)[1] for s in got] == [w["id"] for w in want]
    for s, w in zip(got, want, strict=True):
        assert s.z.tolist() == w["numbers"] and s.pbc.all()
        assert s.energy == pytest.approx(w["energy"], abs=1e-9)
        np.testing.assert_allclose(s.forces, w["forces"], atol=1e-9)
        np.testing.assert_allclose(s.stress, w["stress"], rtol=1e-9, atol=1e-12)  # eV/Å^3, ASE sign
    corrected = list(read_structures("mptrj-json", path, energy="corrected"))
    assert [c.energy for c in corrected] == pytest.approx([w["energy"] - 0.5 for w in want])


def test_the_energy_choice_is_explicit_and_bad_frames_are_named(tmp_path: Path) -> None:
    path = tmp_path / "mptrj.json"
    write_mptrj(path)
    with pytest.raises(BadInput, match="option 'energy' must be one of uncorrected, corrected, got None"):
        list(read_structures("mptrj-json", path))  # no silent default: the registry or recipe says which
    with pytest.raises(BadInput, match="option 'energy' must be one of uncorrected, corrected"):
        list(read_structures("mptrj-json", path, energy="raw"))
    data = json.loads(path.read_text())
    data["mp-30"]["mp-30-1001-1"]["force"] = [[0.0, 0.0]]
    path.write_text(json.dumps(data))
    with pytest.raises(BadInput, match=r"mp-30-1001-1: field 'force' has shape \(1, 2\), expected \(4, 3\)"):
        list(read_structures("mptrj-json", path, energy="uncorrected"))
    (tmp_path / "page.json").write_text("<html>not found</html>")
    assert sniff(tmp_path / "page.json", "mptrj-json") == "not a JSON object (MPtrj JSON starts with '{')"
    (tmp_path / "cut.json").write_text(json.dumps(json.loads(path.read_text()))[:500])
    with pytest.raises(BadInput, match="not MPtrj JSON after"):
        list(read_structures("mptrj-json", tmp_path / "cut.json", energy="uncorrected"))


def test_preprocessing_reads_mptrj_json_through_the_registry(tmp_path: Path) -> None:
    from models.contracts.preprocess import PreprocessSummary
    from models.data.store import open_split
    from models.preprocess import run

    path = tmp_path / "MPtrj_2022.9_full.json.gz"
    write_mptrj(path, compress=True)
    cfg = {"datasets": [{"name": "mptrj", "inputs": [str(path)]}], "output_dir": str(tmp_path / "out"),
           "cutoff": 4.0, "split": {"train": 1.0, "val": 0.0, "test": 0.0}, "seed": 0}
    summary = PreprocessSummary.model_validate(run(cfg, tmp_path / "pre.json")).datasets["mptrj"]
    assert summary.read == summary.kept == 3 and summary.counts["train"] == 3
    assert sorted(summary.elements) == [29, 47]
    store = open_split(tmp_path / "out", "mptrj", "train")
    batch = store.get_batch([0, 1, 2])
    assert bool(batch.has_stress.all()) and bool(batch.has_forces.all())
