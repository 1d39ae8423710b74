"""Bad data and bad app configs refused by ``python -m models.preprocess``: one message naming the file and the
record or field, exit status 2, no result file, and the earlier outputs left as they were.

The app's real entry point (:func:`models.appio.main_for`) runs in this process (``sys.argv`` set), so each
case costs milliseconds; one case runs the app as a subprocess under a file-size limit (a full disk).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from models.appio import main_for
from models.preprocess import run as preprocess_run
from tests.reliability import datafiles as df
from tests.reliability.world import tree

#: (id, dataset name, file builder, fragments; ``{file}`` is the input file).
DATA_CASES: list[tuple[str, str, Callable[[Path], Path], tuple[str, ...]]] = [
    ("extxyz-without-energies", "demo-emt", df.extxyz_without_energies, ("{file}:record 0", "no energy")),
    ("extxyz-nan-positions", "demo-emt", df.extxyz_nan_positions, ("{file}:record 0", "'positions' holds NaN")),
    ("extxyz-truncated", "demo-emt", df.extxyz_truncated, ("{file}",)),
    ("extxyz-garbled-count", "demo-emt", df.extxyz_garbled_count, ("{file}", "line 1: expected the atom count")),
    ("extxyz-empty", "demo-emt", df.extxyz_empty, ("{file}", "empty file")),
    ("extxyz-overlapping-atoms", "demo-emt", df.extxyz_overlapping_atoms,
     ("{file}", "no structure left after filtering", "'min_distance': 3")),
    ("extxyz-nan-energy", "demo-emt", df.extxyz_nan_energy, ("{file}", "'nonfinite': 2")),
    ("hdf5-missing-coordinates", "ani1x", df.hdf5_missing_coordinates, ("{file}:/H2O", "'coordinates'")),
    ("hdf5-missing-energy", "ani1x", df.hdf5_missing_energy, ("{file}", "no energies", "'wb97x_dz.energy'")),
    ("hdf5-missing-atomic-numbers", "ani1x", df.hdf5_missing_atomic_numbers, ("{file}", "'atomic_numbers'")),
    ("hdf5-nan-coordinates", "ani1x", df.hdf5_nan_coordinates, ("{file}:/H2O", "conformer 1", "NaN")),
    ("hdf5-bad-shape", "ani1x", df.hdf5_bad_shape, ("{file}:/H2O", "'coordinates' has shape")),
    ("hdf5-truncated", "ani1x", df.hdf5_truncated, ("{file}", "cannot open as HDF5")),
    ("hdf5-not-hdf5", "ani1x", df.hdf5_not_hdf5, ("{file}", "cannot open as HDF5")),
    ("asedb-garbage", "nabla2dft", df.asedb_garbage, ("{file}", "cannot read ASE database")),
    ("aselmdb-garbage", "omat24", df.aselmdb_garbage, ("{file}",)),
]

#: (id, config edit, fragments; ``{cfg}`` is the config file). The edit gets the good config and the data dir.
CONFIG_CASES: list[tuple[str, Callable[[dict[str, Any], Path], Any], tuple[str, ...]]] = [
    ("cfg-unknown-field", lambda c, d: c.update(cutof=4.0), ("{cfg}", "field 'cutof': unknown field")),
    ("cfg-missing-output-dir", lambda c, d: c.pop("output_dir"), ("{cfg}", "field 'output_dir': Field required")),
    ("cfg-negative-cutoff", lambda c, d: c.update(cutoff=-1.0), ("{cfg}", "field 'cutoff': Input should be greater than 0")),
    ("cfg-cutoff-string", lambda c, d: c.update(cutoff="far"), ("{cfg}", "field 'cutoff': Input should be a valid number")),
    ("cfg-seed-float", lambda c, d: c.update(seed=0.5), ("{cfg}", "field 'seed': Input should be a valid integer")),
    ("cfg-split-bad", lambda c, d: c.update(split={"train": 0.5, "val": 0.1}), ("{cfg}", "field 'split'")),
    ("cfg-unknown-filter", lambda c, d: c.update(filters={"max_energy": 3}),
     ("{cfg}", "field 'filters.max_energy': unknown field")),
    ("cfg-min-distance-above-cutoff", lambda c, d: c.update(filters={"min_distance": 9.0}),
     ("{cfg}", "'filters.min_distance' must be below 'cutoff'")),
    ("cfg-no-datasets", lambda c, d: c.update(datasets=[]), ("{cfg}", "field 'datasets': List should have at least 1 item")),
    ("cfg-unknown-dataset", lambda c, d: c["datasets"][0].update(name="imaginary"), ("{cfg}", "datasets[0].name")),
    ("cfg-unknown-reader", lambda c, d: c["datasets"][0].update(reader="csv"), ("{cfg}", "datasets[0].reader")),
    ("cfg-missing-input", lambda c, d: c["datasets"][0].update(inputs=["missing.extxyz"]),
     ("{cfg}", "datasets[0].inputs", "missing.extxyz does not exist")),
    ("cfg-empty-inputs", lambda c, d: c["datasets"][0].update(inputs=[]), ("{cfg}", "datasets[0].inputs")),
    ("cfg-dataset-twice", lambda c, d: c["datasets"].append(dict(c["datasets"][0])), ("{cfg}", "names a dataset twice")),
    ("cfg-dataset-not-object", lambda c, d: c.update(datasets=["demo-emt"]), ("{cfg}", "datasets[0]")),
]


@pytest.fixture
def earlier(tmp_path: Path) -> tuple[Path, Path]:
    """A data directory with a good extxyz, and an output directory holding an earlier good preprocess run."""
    data = tmp_path / "data"
    data.mkdir()
    df.good_extxyz(data)
    out = tmp_path / "out"
    cfg = _config(out, "demo-emt", [data / "good.extxyz"])
    _write(tmp_path / "good.json", cfg)
    code, _ = _run_app(tmp_path / "good.json", tmp_path / "good-result.json")
    assert code == 0
    return data, out


def _config(out: Path, name: str, inputs: list[Path]) -> dict[str, Any]:
    return {"output_dir": str(out), "cutoff": 4.0, "max_neighbours": 12,
            "datasets": [{"name": name, "inputs": [str(p) for p in inputs]}]}


def _write(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(json.dumps(cfg, indent=2))
    return path


def _run_app(cfg_path: Path, result: Path) -> tuple[int, str]:
    """``python -m models.preprocess --config … --result …`` in this process: (exit status, stderr)."""
    import contextlib
    import io

    err = io.StringIO()
    argv = sys.argv
    sys.argv = ["models.preprocess", "--config", str(cfg_path), "--result", str(result)]
    try:
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
            main_for(preprocess_run, "preprocess")
    finally:
        sys.argv = argv
    return int(exc.value.code or 0), err.getvalue()


def _refused(cfg_path: Path, root: Path, fragments: list[str]) -> str:
    before = tree(root)
    result = root / "result.json"
    code, err = _run_app(cfg_path, result)
    assert code == 2, err
    assert "Traceback" not in err and err.count("error:") == 1, err
    for frag in fragments:
        assert frag in err, f"{frag!r} not in {err!r}"
    assert not result.exists()
    assert tree(root) == before, "files changed"
    return err


@pytest.mark.parametrize(("name", "build", "fragments"), [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data_file_is_refused(name: str, build: Callable[[Path], Path], fragments: tuple[str, ...],
                                  earlier: tuple[Path, Path], tmp_path: Path) -> None:
    data, out = earlier
    bad = build(data)
    cfg = _write(tmp_path / "bad.json", _config(out, name, [bad]))
    _refused(cfg, tmp_path, [f.format(file=bad) for f in fragments])


@pytest.mark.parametrize(("edit", "fragments"), [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_is_refused(edit: Callable[[dict[str, Any], Path], Any], fragments: tuple[str, ...],
                               earlier: tuple[Path, Path], tmp_path: Path) -> None:
    data, out = earlier
    cfg = _config(out, "demo-emt", [data / "good.extxyz"])
    edit(cfg, data)
    path = _write(tmp_path / "bad.json", cfg)
    _refused(path, tmp_path, [f.format(cfg=path) for f in fragments])


@pytest.mark.parametrize(("text", "fragment"), [("{\n  \"output_dir\": \"x\",\n}\n", "line 3: invalid JSON"),
                                                 ("[1, 2]\n", "must be a JSON object"), ("", "line 1: invalid JSON")])
def test_config_not_json(text: str, fragment: str, earlier: tuple[Path, Path], tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    _refused(path, tmp_path, [str(path), fragment])


def test_good_dataset_then_bad_one_writes_nothing(earlier: tuple[Path, Path], tmp_path: Path) -> None:
    """A config whose second dataset is bad leaves the first dataset's earlier store untouched too."""
    data, out = earlier
    bad = df.extxyz_without_energies(data)
    cfg = _config(out, "demo-emt", [data / "good.extxyz"])
    cfg["cutoff"] = 4.5  # the first dataset's store would differ from the earlier one
    cfg["datasets"].append({"name": "mptrj", "inputs": [str(bad)], "reader": "ase"})  # an extxyz export
    path = _write(tmp_path / "bad.json", cfg)
    _refused(path, tmp_path, [f"{bad}:record 0", "no energy"])


def test_unwritable_output_directory(earlier: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = earlier
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory\n")
    path = _write(tmp_path / "bad.json", _config(blocker / "out", "demo-emt", [data / "good.extxyz"]))
    _refused(path, tmp_path, [str(path), "output_dir", str(blocker)])


def test_output_directory_on_read_only_filesystem(earlier: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = earlier
    target = Path("/sys/campaign-out")
    if Path("/sys").exists() and not _read_only("/sys"):
        pytest.skip("/sys is writable here")
    path = _write(tmp_path / "bad.json", _config(target, "demo-emt", [data / "good.extxyz"]))
    _refused(path, tmp_path, [str(path), "output_dir", str(target)])


def _read_only(path: str) -> bool:
    import os

    return not os.access(path, os.W_OK) or os.statvfs(path).f_flag & os.ST_RDONLY != 0


def test_full_disk(earlier: tuple[Path, Path], tmp_path: Path) -> None:
    """The app as a subprocess under a file-size limit (writes fail with EFBIG, as a full disk fails them with
    ENOSPC): one message naming the file, exit 2, no partial output and the earlier outputs untouched."""
    data, out = earlier
    big = df.write_extxyz(data / "big.extxyz", df.emt_frames(40, seed=7))
    path = _write(tmp_path / "full.json", _config(out, "demo-emt", [big]))
    before = tree(tmp_path)
    limit = 16 * 1024  # larger than the config, smaller than the store it would write

    def _limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "models.preprocess", "--config", str(path), "--result",
                           str(tmp_path / "result.json")], capture_output=True, text=True, timeout=120,
                          preexec_fn=_limit, env={"OMP_NUM_THREADS": "1", **_env()})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "File too large" in proc.stderr and str(out) in proc.stderr
    assert not (tmp_path / "result.json").exists()
    assert tree(tmp_path) == before


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_data_corpus_size() -> None:
    assert len(DATA_CASES) + len(CONFIG_CASES) + 3 + 4 >= 35
