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
from models.data.filters import REASONS, FilterConfig, distance_reason, force_reason, label_reason
from models.data.graphs import radius_graph_pbc
from models.data.readers import READER_NAMES, get_reader
from models.data.reference import fit_reference_energies, reference_sum
from models.data.split import SPLITS, assign_split, check_fractions, structure_id
from models.data.store import SCHEMA_VERSION, pack_graphs, write_split
from models.registry import load_registry

SUMMARY_NAME = "summary.json"
DEFAULTS: dict[str, Any] = {
    "cutoff": 5.0,
    "max_neighbours": 32,
    "split": {"train": 0.8, "val": 0.1, "test": 0.1},
    "seed": 0,
    "filters": {"max_force": 50.0, "min_distance": 0.5, "deduplicate": True},
    "ridge": 1e-8,
    "shard_size": 100_000,
}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _resolve(p: str, base: Path) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else (base / path)


def normalise_config(cfg: dict[str, Any], cfg_path: Path) -> dict[str, Any]:
    """Fill defaults, resolve paths and validate; raise :class:`BadInput` naming the config and field."""
    where = str(cfg_path)
    base = cfg_path.parent
    known = {"output_dir", "datasets", *DEFAULTS}
    extra = set(cfg) - known
    if extra:
        raise BadInput(f"{where}: unknown field(s) {sorted(extra)}")
    if "output_dir" not in cfg:
        raise BadInput(f"{where}: missing field 'output_dir'")
    out = {**DEFAULTS, **cfg}
    out["output_dir"] = str(_resolve(str(cfg["output_dir"]), base))
    out["filters"] = {**DEFAULTS["filters"], **cfg.get("filters", {})}
    try:
        FilterConfig(**out["filters"])
    except TypeError as exc:
        raise BadInput(f"{where}: field 'filters': {exc}") from exc
    try:
        out["split"] = check_fractions(out["split"])
    except (ValueError, AttributeError) as exc:
        raise BadInput(f"{where}: field 'split': {exc}") from exc
    for key, typ in (("cutoff", (int, float)), ("max_neighbours", (int, type(None))), ("seed", int)):
        if not isinstance(out[key], typ) or isinstance(out[key], bool):
            raise BadInput(f"{where}: field {key!r} has the wrong type ({out[key]!r})")
    if out["cutoff"] <= 0:
        raise BadInput(f"{where}: field 'cutoff' must be > 0")
    mind = out["filters"]["min_distance"]
    if mind is not None and mind >= out["cutoff"]:
        raise BadInput(f"{where}: field 'filters.min_distance' must be below 'cutoff'")
    datasets = cfg.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise BadInput(f"{where}: field 'datasets' must be a non-empty list")
    registry = load_registry()
    norm = []
    for k, d in enumerate(datasets):
        field = f"datasets[{k}]"
        if not isinstance(d, dict) or "name" not in d:
            raise BadInput(f"{where}: field {field}: expected an object with 'name' and 'inputs'")
        try:
            info = registry.get(d["name"])
        except KeyError as exc:
            raise BadInput(f"{where}: field {field}.name: {exc.args[0]}") from exc
        reader = d.get("reader", info.reader)
        if reader not in READER_NAMES:
            raise BadInput(
                f"{where}: field {field}.reader: {reader!r} is not a reader ({', '.join(READER_NAMES)});"
                f" registry notes for {info.name}: {info.notes or '-'}"
            )
        inputs = d.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise BadInput(f"{where}: field {field}.inputs must be a non-empty list of files")
        paths = [_resolve(str(p), base) for p in inputs]
        for p in paths:
            if not p.exists():
                raise BadInput(f"{where}: field {field}.inputs: {p} does not exist")
        norm.append(
            {
                "name": info.name,
                "inputs": [str(p) for p in paths],
                "reader": reader,
                "reader_options": {**info.reader_options, **d.get("reader_options", {})},
            }
        )
    names = [d["name"] for d in norm]
    if len(set(names)) != len(names):
        raise BadInput(f"{where}: field 'datasets' names a dataset twice")
    out["datasets"] = norm
    return out


def content_hash(cfg: dict[str, Any], input_hashes: dict[str, str]) -> str:
    """sha256 over the normalised config, the inputs' sha256 and the schema version."""
    payload = json.dumps({"config": cfg, "inputs": input_hashes, "schema": SCHEMA_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _outputs_intact(summary: dict[str, Any], out_dir: Path) -> bool:
    for entry in summary.get("output_files", []):
        p = out_dir / entry["path"]
        if not p.is_file() or p.stat().st_size != entry["bytes"]:
            return False
    return True


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def process_dataset(d: dict[str, Any], cfg: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Read, filter, graph, split, normalise and write one dataset; return its summary."""
    info = load_registry().get(d["name"])
    fcfg = FilterConfig(**cfg["filters"])
    reader = get_reader(d["reader"])
    filtered: Counter[str] = Counter()
    seen: set[int] = set()
    records: list[dict[str, Any]] = []
    n_read = 0
    for path in d["inputs"]:
        for s in reader(Path(path), units=info.units, **d["reader_options"]):
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
            sid = structure_id(s.z, s.pos, s.cell, s.pbc)
            if fcfg.deduplicate and sid in seen:
                filtered["duplicate"] += 1
                continue
            seen.add(sid)
            records.append(
                {
                    "z": s.z,
                    "pos": s.pos,
                    "forces": s.forces,
                    "cell": s.cell,
                    "pbc": s.pbc,
                    "energy": s.energy,
                    "stress": s.stress,
                    "sid": sid,
                    "edge_index": ei,
                    "shift": shift,
                    "charge": s.charge,
                    "spin": s.spin,
                    "split": assign_split(sid, cfg["seed"], cfg["split"]),
                }
            )
    if not records:
        raise BadInput(
            f"{d['inputs'][0]}: dataset {d['name']!r}: no structure left after filtering ({dict(filtered)})"
        )
    # fitted on every kept structure (all splits): one number per element leaks nothing useful, and an
    # element seen only in val/test still gets a reference
    refs = fit_reference_energies(
        [r["z"] for r in records], np.array([r["energy"] for r in records]), cfg["ridge"]
    )
    for r in records:
        r["eref"] = reference_sum(r["z"], refs)
    meta = {
        "dataset": info.name,
        "head_id": info.head_id,
        "level_of_theory": info.level_of_theory,
        "fidelity": info.fidelity,
        "kind": info.kind,
        "units": {"energy": "eV", "forces": "eV/Å", "length": "Å", "stress": "eV/Å^3"},
        "source_units": dict(info.units),
        "reference_energies": {str(z): e for z, e in sorted(refs.items())},
        "cutoff": float(cfg["cutoff"]),
        "max_neighbours": cfg["max_neighbours"],
        "seed": cfg["seed"],
    }
    counts = {}
    for split in SPLITS:
        part = [r for r in records if r["split"] == split]
        write_split(
            out_dir / info.name / split, pack_graphs(part), {**meta, "split": split}, cfg["shard_size"]
        )
        counts[split] = len(part)
    energy = np.array([r["energy"] for r in records])
    natoms = np.array([len(r["z"]) for r in records])
    resid = (energy - np.array([r["eref"] for r in records])) / natoms
    return {
        "head_id": info.head_id,
        "read": n_read,
        "kept": len(records),
        "counts": counts,
        "filtered": {reason: filtered.get(reason, 0) for reason in REASONS},
        "elements": sorted({int(z) for r in records for z in np.unique(r["z"])}),
        "atoms": int(natoms.sum()),
        "edges": int(sum(r["edge_index"].shape[1] for r in records)),
        "energy": _stats(energy),
        "energy_per_atom_after_reference": _stats(resid),
        "reference_energies": meta["reference_energies"],
        "with_forces": int(sum(r["forces"] is not None for r in records)),
        "with_stress": int(sum(r["stress"] is not None for r in records)),
    }


def run(cfg: dict[str, Any], cfg_path: Path) -> dict[str, Any]:
    """The app: see the module docstring. Returns the summary dict."""
    cfg = normalise_config(cfg, cfg_path)
    out_dir = Path(cfg["output_dir"])
    input_hashes = {p: sha256_file(Path(p)) for d in cfg["datasets"] for p in d["inputs"]}
    chash = content_hash(cfg, input_hashes)
    summary_path = out_dir / SUMMARY_NAME
    if summary_path.is_file():
        try:
            old = json.loads(summary_path.read_text())
        except ValueError:
            old = {}
        if old.get("content_hash") == chash and _outputs_intact(old, out_dir):
            return {**old, "skipped": True}
    t0 = time.perf_counter()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    except OSError as exc:
        raise BadInput(f"{cfg_path}: field 'output_dir': cannot create {out_dir} ({exc.strerror})") from exc
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
        refused = write_refused(exc)
        if refused is None:
            raise
        raise BadInput(f"{cfg_path}: field 'output_dir': {refused}") from exc
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
    try:
        write_json_atomic(summary_path, summary)
    except OSError as exc:
        refused = write_refused(exc)
        if refused is None:
            raise
        raise BadInput(f"{cfg_path}: field 'output_dir': {refused}") from exc
    return summary


if __name__ == "__main__":
    main_for(run, "Preprocess dataset files into ADIOS2 graph stores.")
