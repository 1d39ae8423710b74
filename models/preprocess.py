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
from models.data.filters import REASONS, FilterConfig, distance_reason, force_reason, label_reason
from models.data.graphs import radius_graph_pbc
from models.data.merge import (
    PER_PART_FIELDS,
    load_parts,
    merge_content_hash,
    merge_dataset,
    part_output_files,
)
from models.data.readers import READER_NAMES, get_reader
from models.data.reference import composition_factor, fit_reference_energies, reference_sum
from models.data.split import SPLITS, assign_split, check_fractions, structure_id
from models.data.store import INDEX_NAME, SCHEMA_VERSION, pack_graphs, write_split
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
    "part": None,
}


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
    out["part"] = _check_part(out["part"], where)
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


def _check_part(part: Any, where: str) -> dict[str, int] | None:
    """Validate the ``part`` field: ``{"index": k, "count": n}`` with ``0 <= k < n``, or None."""
    if part is None:
        return None
    ok = isinstance(part, dict) and set(part) == {"index", "count"}
    ok = ok and all(isinstance(part[k], int) and not isinstance(part[k], bool) for k in ("index", "count"))
    if not ok or not 0 <= part["index"] < part["count"]:
        raise BadInput(
            f"{where}: field 'part': expected {{'index': k, 'count': n}} with 0 <= k < n, got {part!r}"
        )
    return {"index": part["index"], "count": part["count"]}


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
    part = cfg.get("part")
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
    if not records and part is None:
        raise BadInput(
            f"{d['inputs'][0]}: dataset {d['name']!r}: no structure left after filtering ({dict(filtered)})"
        )
    zs, energy = [r["z"] for r in records], np.array([r["energy"] for r in records], dtype=np.float64)
    if part is None:
        # fitted on every kept structure (all splits): one number per element leaks nothing useful, and an
        # element seen only in val/test still gets a reference
        refs = fit_reference_energies(zs, energy, cfg["ridge"])
    else:
        refs = {}  # fitted over all parts by the merge; until then eref is NaN and marked deferred
    for r in records:
        r["eref"] = reference_sum(r["z"], refs) if part is None else float("nan")
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
        **({"part": part, "eref_deferred": True} if part is not None else {}),
    }
    counts = {}
    for split in SPLITS:
        chosen = [r for r in records if r["split"] == split]
        write_split(
            out_dir / info.name / split, pack_graphs(chosen), {**meta, "split": split}, cfg["shard_size"]
        )
        counts[split] = len(chosen)
    natoms = np.array([len(r["z"]) for r in records], dtype=np.int64)
    resid = (energy - np.array([r["eref"] for r in records])) / np.maximum(natoms, 1)
    out = {
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
    if part is not None:
        del out["energy_per_atom_after_reference"], out["reference_energies"]
        out["reference_factor"] = composition_factor(zs, energy)
    return out


def _saved_if_current(out_dir: Path, chash: str) -> dict[str, Any] | None:
    """The saved summary marked ``skipped`` when it has content hash ``chash`` and intact outputs, else None."""
    summary_path = out_dir / SUMMARY_NAME
    if summary_path.is_file():
        try:
            old = json.loads(summary_path.read_text())
        except ValueError:
            old = {}
        if old.get("content_hash") == chash and _outputs_intact(old, out_dir):
            return {**old, "skipped": True}
    return None


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


def _write_summary(out_dir: Path, summary: dict[str, Any], cfg_path: Path) -> None:
    try:
        write_json_atomic(out_dir / SUMMARY_NAME, summary)
    except OSError as exc:
        raise _refused(exc, cfg_path) from exc


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
    _write_summary(out_dir, summary, cfg_path)
    return summary


def run_merge(cfg: dict[str, Any], cfg_path: Path) -> dict[str, Any]:
    """Merge mode (``"parts"`` in the config): see :mod:`models.data.merge`. Returns the summary dict."""
    where = str(cfg_path)
    extra = set(cfg) - {"output_dir", "parts", "ridge"}
    if extra:
        raise BadInput(f"{where}: unknown field(s) {sorted(extra)} (a merge takes output_dir, parts, ridge)")
    if "output_dir" not in cfg:
        raise BadInput(f"{where}: missing field 'output_dir'")
    parts_field = cfg["parts"]
    if (
        not isinstance(parts_field, list)
        or not parts_field
        or not all(isinstance(p, str) for p in parts_field)
    ):
        raise BadInput(f"{where}: field 'parts' must be a non-empty list of part output directories")
    ridge = cfg.get("ridge", DEFAULTS["ridge"])
    if not isinstance(ridge, (int, float)) or isinstance(ridge, bool) or ridge < 0:
        raise BadInput(f"{where}: field 'ridge' must be a non-negative number, got {ridge!r}")
    base = cfg_path.parent
    out_dir = _resolve(str(cfg["output_dir"]), base)
    parts = load_parts([_resolve(p, base) for p in parts_field], where)
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
    _write_summary(out_dir, summary, cfg_path)
    return summary


if __name__ == "__main__":
    main_for(run, "Preprocess dataset files into ADIOS2 graph stores.")
