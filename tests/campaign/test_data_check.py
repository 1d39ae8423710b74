"""``campaign data check``: files that are what the registry says pass with a summary; a wrong file, wrong units,
a partial download and a dataset without a reader each exit 2 naming the file and the problem."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
from typer.testing import CliRunner

from campaign.cli.app import app
from models.data.demo import generate
from tests.models.data.mptrj_layout import write_mptrj

RUN = CliRunner()


def _check(*args: str) -> tuple[int, str]:
    res = RUN.invoke(app, ["data", "check", *args], env={"COLUMNS": "200"})
    return res.exit_code, res.output


def test_a_complete_demo_dataset_passes_with_its_summary(tmp_path: Path) -> None:
    path = tmp_path / "demo-emt.extxyz"
    ase.io.write(path, list(generate("emt", 0, 0, 60)), format="extxyz")
    code, out = _check("demo-emt", str(path), "--sample", "0")
    assert code == 0, out
    assert "structures read" in out and "60" in out and "ok demo-emt: 60 structures" in out


def test_mptrj_as_published_is_read_and_a_partial_download_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "MPtrj_2022.9_full.json.gz"
    write_mptrj(path, compress=True)
    code, out = _check("mptrj", str(path), "--sample", "2")  # a sample: the count is not judged
    assert code == 0, out
    assert "first 2 per file" in out and "figshare" in out.replace("\n", "")
    code, out = _check("mptrj", str(path), "--sample", "0")  # all of it: 3 structures, not ~1.6 million
    assert code == 2 and "3 structures in all, the registry says about 1,580,395" in out.replace("\n", " ")


def test_wrong_files_and_wrong_units_are_named(tmp_path: Path) -> None:
    page = tmp_path / "MPtrj_2022.9_full.json"
    page.write_text("<html>rate limited</html>")
    code, out = _check("mptrj", str(page))
    assert code == 2 and f"{page}: not a JSON object" in out.replace("\n", "")
    mptrj = tmp_path / "mptrj.json"
    frames = write_mptrj(mptrj)
    data = json.loads(mptrj.read_text())
    for fr in data.values():  # forces written in Hartree/Bohr-like magnitudes: 1e4 eV/Å
        for f in fr.values():
            f["force"] = [[1.0e4, 0.0, 0.0]] * len(f["force"])
    mptrj.write_text(json.dumps(data))
    code, out = _check("mptrj", str(mptrj))
    first = next(iter(next(iter(frames.values()))))
    assert code == 2 and f"{first}: a force component of 10000 eV/Å is implausible" in out.replace("\n", "")
    code, out = _check("mptrj", str(tmp_path / "missing.json"))
    assert code == 2 and "missing.json: does not exist" in out.replace("\n", "")


def test_an_unknown_dataset_is_named(tmp_path: Path) -> None:
    path = tmp_path / "x.extxyz"
    path.write_bytes(b"\0" * 100)
    code, out = _check("no-such-dataset", str(path))
    assert code == 2 and "unknown dataset" in out
