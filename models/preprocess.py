"""Preprocessing app: dataset files -> filtered, split, normalised radius graphs in ADIOS2 stores.

``python -m models.preprocess --config cfg.json --result r.json`` with a config such as::

    {
      "output_dir": "graphs",
      "datasets": [
        {"name": "demo-emt", "inputs": ["demo-emt.extxyz"]},
        {"name": "ani1x", "inputs": ["ani1x.h5"], "reader": "ani-hdf5", "reader_options": {}}
      ],
      "cutoff": 5.0, "max_neighbours": 32,
      "split": {"train": 0.8, "val": 0.1, "test": 0.1}, "seed": 0,
      "filters": {"max_force": 50.0, "min_distance": 0.5, "deduplicate": true},
      "ridge": 1e-8, "shard_size": 100000
    }

Relative paths are resolved against the config file's directory. Dataset names come from the registry, which
also gives the default reader, its options and the source units. For each dataset the app reads every input,
filters outliers (counted by reason), builds the radius graph (vesin), assigns hash-based splits, fits element
reference energies on all kept structures, and writes ``<output_dir>/<dataset>/<split>/``. The result (also saved
as ``<output_dir>/summary.json``) holds per-dataset counts per split, elements, energy statistics, filtered
counts, reference energies, output files (sha256, bytes), input files (sha256) and a content hash of inputs +
config: a re-run with the same hash and intact outputs returns the saved summary with ``"skipped": true``.

Sharded (parallel writers, one big dataset): ``"part": {"index": k, "count": N}`` makes the run keep only the
structures whose stable id is ``k mod N`` (duplicates always share a part) and defer ``eref``; its summary
carries a composition factor per dataset. ``{"output_dir": D, "parts": [part dirs], "ridge": …}`` then merges:
references fitted over all parts, one index per split that reads every part's shards as one store
(:mod:`models.data.merge`). The merged splits and references equal a single task's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from models.appio import BadInput, main_for, replace_dir, write_json_atomic, write_refused
from models.atomic_files import sha256_file
from models.contracts import validate
from models.contracts.preprocess import Filters, MergeConfig, PreprocessConfig, PreprocessSummary
from models.data.filters import REASONS, distance_reason, force_reason, label_reason
from models.data.graphs import radius_graph_pbc
from models.data.id_set import IdSet
from models.data.merge import (
    PER_PART_FIELDS,
    load_parts,
    merge_content_hash,
    merge_dataset,
    part_output_files,
)
from models.data.readers import READER_NAMES, get_reader
from models.data.reference import (
    RunningStats,
    combine_factors,
    composition_factor,
    fit_reference_energies_from_factors,
)
from models.data.shards import (
    INDEX_NAME,
    SCHEMA_VERSION,
    pack_graphs,
    split_energies,
    write_index,
    write_shard,
)
from models.data.split import SPLITS, assign_split, check_fractions, structure_id
from models.registry import load_registry

SUMMARY_NAME = "summary.json"


def _resolve(p: str, base: Path) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else (base / path)


def normalise_config(raw: dict[str, Any], cfg_path: Path) -> dict[str, Any]:
    """Validate against :class:`models.contracts.preprocess.PreprocessConfig`, fill defaults (the registry's
    reader and its options), resolve paths against the config's directory and check the inputs exist.

    Returns:
        The normalised config as JSON (what the content hash covers).

    Raises:
        BadInput: naming the config file and the field.
    """
    where = str(cfg_path)
    base = cfg_path.parent
    cfg = validate(PreprocessConfig, raw, where)
    try:
        split = check_fractions(cfg.split)
    except ValueError as exc:
        raise BadInput(f"{where}: field 'split': {exc}") from exc
    registry = load_registry()
    datasets = []
    for k, d in enumerate(cfg.datasets):
        field = f"datasets[{k}]"
        try:
            info = registry.get(d.name)
        except KeyError as exc:
            raise BadInput(f"{where}: field {field}.name: {exc.args[0]}") from exc
        reader = d.reader or info.reader
        if reader not in READER_NAMES:
            raise BadInput(
                f"{where}: field {field}.reader: {reader!r} is not a reader ({', '.join(READER_NAMES)});"
                f" registry notes for {info.name}: {info.notes or '-'}"
            )
        paths = [_resolve(p, base) for p in d.inputs]
        for p in paths:
            if not p.exists():
                raise BadInput(f"{where}: field {field}.inputs: {p} does not exist")
        datasets.append({"name": info.name, "inputs": [str(p) for p in paths], "reader": reader,
                         # the registry's options are its own reader's: an override reader gets only its own
                         "reader_options": {**(info.reader_options if reader == info.reader else {}),
                                            **d.reader_options}})
    out = cfg.model_dump(mode="json")
    out.update(output_dir=str(_resolve(cfg.output_dir, base)), split=split, datasets=datasets)
    return out


def in_part(sid: int, part: dict[str, int] | None) -> bool:
    """Whether structure ``sid`` belongs to ``part`` (all do when ``part`` is None).

    Parts are chosen by the stable structure id, so duplicates of a structure always land in the same part
    (deduplication within a part is deduplication over the whole dataset) and the parts are disjoint.
    """
    return part is None or sid % part["count"] == part["index"]


def content_hash(cfg: dict[str, Any], input_hashes: dict[str, str]) -> str:
    """sha256 over the normalised config, the inputs' sha256 and the schema version."""
    payload = json.dumps({"config": cfg, "inputs": input_hashes, "schema": SCHEMA_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


#: Structures per least-squares summary of the reference-energy fit (:func:`composition_factor`): the fit's
#: memory is one chunk's compositions, whatever the dataset's size.
FIT_CHUNK = 4096


class _SplitWriter:
    """One split of one dataset written as it fills: a shard each ``shard_size`` graphs, the index at the end.

    At most ``shard_size`` graphs are held; shard files are named as :func:`models.data.shards.write_split`
    names them (``shard-00000.bp`` …) inside the run's staging directory.
    """

    def __init__(self, split_dir: Path, shard_meta: dict[str, Any], shard_size: int) -> None:
        self.dir, self.meta, self.size = split_dir, shard_meta, shard_size
        self.buffer: list[dict[str, Any]] = []
        self.entries: list[dict[str, Any]] = []
        self.count = 0

    def add(self, record: dict[str, Any]) -> None:
        self.buffer.append(record)
        self.count += 1
        if len(self.buffer) >= self.size:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.dir.mkdir(parents=True, exist_ok=True)
            shard = self.dir / f"shard-{len(self.entries):05d}.bp"
            self.entries.append(write_shard(shard, pack_graphs(self.buffer), self.meta))
            self.buffer = []

    def close(self, index_meta: dict[str, Any]) -> None:
        self.flush()
        self.dir.mkdir(parents=True, exist_ok=True)
        write_index(self.dir, self.entries, index_meta)


def process_dataset(d: dict[str, Any], cfg: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Read, filter, graph, split, normalise and write one dataset; return its summary.

    Streams: each kept structure goes to its split's writer at once (at most ``shard_size`` graphs held per
    split), the reference-energy fit keeps one least-squares summary per :data:`FIT_CHUNK` structures, and the
    shards store ``eref`` deferred: the index carries the fitted references, from which the store sums it
    (as for the parts of a sharded run). What grows with the dataset is one stable id per kept structure
    (deduplication: 9-17 bytes each in an :class:`~models.data.id_set.IdSet`) and the summary's per-split
    figures, read back from the written stores.
    """
    info = load_registry().get(d["name"])
    fcfg = Filters.model_validate(cfg["filters"])
    reader = get_reader(d["reader"])
    part = cfg.get("part")
    meta = {
        "dataset": info.name,
        "head_id": info.head_id,
        "level_of_theory": info.level_of_theory,
        "fidelity": info.fidelity,
        "kind": info.kind,
        "units": {"energy": "eV", "forces": "eV/Å", "length": "Å", "stress": "eV/Å^3"},
        "source_units": dict(info.units),
        "cutoff": float(cfg["cutoff"]),
        "max_neighbours": cfg["max_neighbours"],
        "seed": cfg["seed"],
        **({"part": part} if part is not None else {}),
    }
    writers = {split: _SplitWriter(out_dir / info.name / split, {**meta, "split": split, "eref_deferred": True},
                                   cfg["shard_size"]) for split in SPLITS}
    filtered: Counter[str] = Counter()
    seen = IdSet()
    factors: list[dict[str, object]] = []
    chunk_z: list[np.ndarray] = []
    chunk_e: list[float] = []
    n_read = kept = atoms = edges = with_forces = with_stress = 0
    for path in d["inputs"]:
        for s in reader(Path(path), units=info.units, **d["reader_options"]):
            sid = structure_id(s.z, s.pos, s.cell, s.pbc)
            if not in_part(sid, part):
                continue
            n_read += 1
            reason = label_reason(s) or force_reason(s, fcfg)
            if reason:
                filtered[reason] += 1
                continue
            ei, shift, dist = radius_graph_pbc(s.pos, s.cell, s.pbc, cfg["cutoff"], cfg["max_neighbours"])
            reason = distance_reason(dist, fcfg)
            if reason:
                filtered[reason] += 1
                continue
            if fcfg.deduplicate and not seen.add(sid):  # ids are kept only when deduplicating
                filtered["duplicate"] += 1
                continue
            split = assign_split(sid, cfg["seed"], cfg["split"])
            writers[split].add({"z": s.z, "pos": s.pos, "forces": s.forces, "cell": s.cell, "pbc": s.pbc,
                                "energy": s.energy, "stress": s.stress, "sid": sid, "edge_index": ei,
                                "shift": shift, "charge": s.charge, "spin": s.spin, "split": split,
                                "eref": float("nan")})
            kept += 1
            atoms += len(s.z)
            edges += int(ei.shape[1])
            with_forces += s.forces is not None
            with_stress += s.stress is not None
            chunk_z.append(s.z)
            chunk_e.append(float(s.energy))  # type: ignore[arg-type]  # label_reason kept only labelled ones
            if len(chunk_z) >= FIT_CHUNK:
                factors.append(composition_factor(chunk_z, np.asarray(chunk_e)))
                chunk_z, chunk_e = [], []
    if chunk_z:
        factors.append(composition_factor(chunk_z, np.asarray(chunk_e)))
    if not kept and part is None:
        raise BadInput(
            f"{d['inputs'][0]}: dataset {d['name']!r}: no structure left after filtering ({dict(filtered)})"
        )
    if part is None:
        # fitted on every kept structure (all splits): one number per element leaks nothing useful, and an
        # element seen only in val/test still gets a reference
        refs = fit_reference_energies_from_factors(factors, cfg["ridge"])
        index_meta = {**meta, "reference_energies": {str(z): e for z, e in sorted(refs.items())},
                      "eref_from_index": True}
    else:
        refs = {}  # fitted over all parts by the merge; until then eref is NaN and marked deferred
        index_meta = {**meta, "reference_energies": {}, "eref_deferred": True}
    energy, resid = RunningStats(), RunningStats()  # over the written shards, one at a time
    for split, writer in writers.items():
        writer.close({**index_meta, "split": split})
        if writer.count:
            for e, r in split_energies(writer.dir, refs):
                energy.add(e)
                resid.add(r)
    out = {
        "head_id": info.head_id,
        "read": n_read,
        "kept": kept,
        "counts": {split: w.count for split, w in writers.items()},
        "filtered": {reason: filtered.get(reason, 0) for reason in REASONS},
        "elements": sorted({int(e) for f in factors for e in f["elements"]}),  # type: ignore[attr-defined]
        "atoms": atoms,
        "edges": edges,
        "energy": energy.result(),
        "energy_per_atom_after_reference": resid.result(),
        "reference_energies": index_meta["reference_energies"],
        "with_forces": with_forces,
        "with_stress": with_stress,
    }
    if part is not None:
        del out["energy_per_atom_after_reference"], out["reference_energies"]
        out["reference_factor"] = combine_factors(factors)  # a part's "energy": from the energies it holds
    return out


def _saved_if_current(out_dir: Path, chash: str) -> dict[str, Any] | None:
    """The saved summary marked ``skipped`` when it has content hash ``chash`` and intact outputs, else None
    (also when it is unreadable or not a :class:`PreprocessSummary`: the run rebuilds it)."""
    summary_path = out_dir / SUMMARY_NAME
    if not summary_path.is_file():
        return None
    try:
        old = PreprocessSummary.model_validate_json(summary_path.read_text())
    except ValueError:
        return None
    intact = all((out_dir / f.path).is_file() and (out_dir / f.path).stat().st_size == f.bytes
                 for f in old.output_files)
    if old.content_hash != chash or not intact:
        return None
    return {**old.model_dump(mode="json", exclude_none=True), "skipped": True}


def _make_staging(out_dir: Path, cfg_path: Path) -> Path:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    except OSError as exc:
        raise BadInput(f"{cfg_path}: field 'output_dir': cannot create {out_dir} ({exc.strerror})") from exc


def _refused(exc: OSError | RuntimeError, cfg_path: Path) -> BadInput:
    """A full disk or read-only output as :class:`BadInput`; re-raises anything else."""
    refused = write_refused(exc)
    if refused is None:
        raise exc
    return BadInput(f"{cfg_path}: field 'output_dir': {refused}")


def _write_summary(out_dir: Path, summary: dict[str, Any], cfg_path: Path) -> dict[str, Any]:
    """Save the run's summary (checked against :class:`PreprocessSummary`) and return it as the result."""
    checked = PreprocessSummary.model_validate(summary).model_dump(mode="json", exclude_none=True)
    try:
        write_json_atomic(out_dir / SUMMARY_NAME, checked)
    except OSError as exc:
        raise _refused(exc, cfg_path) from exc
    return checked


def run(cfg: dict[str, Any], cfg_path: Path) -> dict[str, Any]:
    """The app: see the module docstring. Returns the summary dict."""
    if "parts" in cfg:
        return run_merge(cfg, cfg_path)
    cfg = normalise_config(cfg, cfg_path)
    out_dir = Path(cfg["output_dir"])
    input_hashes = {p: sha256_file(Path(p)) for d in cfg["datasets"] for p in d["inputs"]}
    chash = content_hash(cfg, input_hashes)
    saved = _saved_if_current(out_dir, chash)
    if saved is not None:
        return saved
    t0 = time.perf_counter()
    staging = _make_staging(out_dir, cfg_path)
    # Every dataset is built under ``staging`` and moved into place only once all of them succeeded: bad input
    # in any dataset (or a full disk) leaves the earlier outputs as they were.
    try:
        per_dataset = {d["name"]: process_dataset(d, cfg, staging) for d in cfg["datasets"]}
        files = []
        for name in per_dataset:
            for p in sorted((staging / name).rglob("*")):
                rel = p.relative_to(staging)
                if p.is_file() and not any(part.startswith(".") for part in rel.parts):
                    files.append({"path": str(rel), "sha256": sha256_file(p), "bytes": p.stat().st_size})
        for name in per_dataset:
            replace_dir(staging / name, out_dir / name)
    except (OSError, RuntimeError) as exc:
        raise _refused(exc, cfg_path) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary = {
        "content_hash": chash,
        "schema_version": SCHEMA_VERSION,
        "output_dir": str(out_dir),
        "datasets": per_dataset,
        "input_files": [
            {"path": p, "sha256": h, "bytes": Path(p).stat().st_size} for p, h in input_hashes.items()
        ],
        "output_files": files,
        "config": cfg,
        "seconds": round(time.perf_counter() - t0, 3),
        "skipped": False,
    }
    return _write_summary(out_dir, summary, cfg_path)


def run_merge(cfg: dict[str, Any], cfg_path: Path) -> dict[str, Any]:
    """Merge mode (``"parts"`` in the config): see :mod:`models.data.merge`. Returns the summary dict."""
    where = str(cfg_path)
    merge = validate(MergeConfig, cfg, where)
    ridge = merge.ridge
    base = cfg_path.parent
    out_dir = _resolve(merge.output_dir, base)
    parts = load_parts([_resolve(p, base) for p in merge.parts], where)
    chash = merge_content_hash(parts, float(ridge))
    saved = _saved_if_current(out_dir, chash)
    if saved is not None:
        return saved
    t0 = time.perf_counter()
    names = list(parts[0]["summary"]["datasets"])
    staging = _make_staging(out_dir, cfg_path)
    try:
        per_dataset = {name: merge_dataset(parts, name, staging, out_dir, float(ridge)) for name in names}
        files = [
            {"path": str(p.relative_to(staging)), "sha256": sha256_file(p), "bytes": p.stat().st_size}
            for name in names
            for p in sorted((staging / name).rglob(INDEX_NAME))
        ] + part_output_files(parts, out_dir)
        for name in names:
            replace_dir(staging / name, out_dir / name)
    except (OSError, RuntimeError) as exc:
        raise _refused(exc, cfg_path) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    first = parts[0]["summary"]
    part_cfg = {k: v for k, v in first["config"].items() if k not in PER_PART_FIELDS}
    summary = {
        "content_hash": chash,
        "schema_version": SCHEMA_VERSION,
        "output_dir": str(out_dir),
        "datasets": per_dataset,
        "input_files": first["input_files"],
        "output_files": files,
        "config": {
            "output_dir": str(out_dir),
            "parts": [str(p["dir"]) for p in parts],
            "ridge": ridge,
            "part_config": part_cfg,
        },
        "parts": [{"dir": str(p["dir"]), "content_hash": p["summary"]["content_hash"]} for p in parts],
        "seconds": round(time.perf_counter() - t0, 3),
        "skipped": False,
    }
    return _write_summary(out_dir, summary, cfg_path)


if __name__ == "__main__":
    main_for(run, "Preprocess dataset files into ADIOS2 graph stores.")
