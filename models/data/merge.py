"""Merge the parts of a sharded preprocessing run into one store per dataset split, read as one.

The ADIOS2 wheel has no MPI, so parallel writers do not share files: ``N`` ``models.preprocess`` tasks with
``"part": {"index": k, "count": N}`` each write a complete output directory holding the structures whose
stable id is ``k mod N`` (``eref`` deferred, and a :func:`~models.data.reference.composition_factor` of the
part in its summary). The merge then

1. checks the parts belong together (same config but for ``part`` / ``output_dir``, same input files, each
   index ``0 … N-1`` once),
2. fits the element reference energies over all parts at once (TSQR of the per-part factors: the same
   least-squares problem as a single task solves),
3. writes ``<output_dir>/<dataset>/<split>/index.json`` listing the shards of every part (paths relative to
   the split directory, graph/atom/edge counts, first global graph, file sizes and sha256) with the fitted
   references. :class:`~models.data.store.GraphStore` opens it as one store (random access, chunks and
   per-rank sharding cross part boundaries) and sums ``eref`` from the references; nothing is copied.

Splits depend only on (seed, structure id), so the merged splits hold exactly the graphs of a single-task run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from models.appio import BadInput, write_json_atomic
from models.atomic_files import sha256_file
from models.data.filters import REASONS
from models.data.reference import RunningStats, fit_reference_energies_from_factors
from models.data.shards import INDEX_NAME, SCHEMA_VERSION, split_energies
from models.data.split import SPLITS

SUMMARY_NAME = "summary.json"
#: Config fields that may differ between the parts of one run.
PER_PART_FIELDS = ("part", "output_dir")


def load_parts(part_dirs: Sequence[Path], where: str) -> list[dict[str, Any]]:
    """Read and cross-check the summaries of the parts, returned in part order.

    Raises:
        BadInput: A part is missing, unfinished, from another run, or the parts do not cover ``0 … N-1``.
    """
    parts = []
    for d in part_dirs:
        path = d / SUMMARY_NAME
        try:
            summary = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise BadInput(
                f"{where}: field 'parts': {path} does not exist (part not preprocessed yet?)"
            ) from exc
        except (OSError, ValueError) as exc:
            raise BadInput(f"{path}: unreadable part summary ({exc})") from exc
        part = summary.get("config", {}).get("part")
        if not isinstance(part, dict):
            raise BadInput(f"{path}: field 'config.part': not the summary of one part of a sharded run")
        parts.append({"dir": d, "summary": summary, "index": int(part["index"]), "count": int(part["count"])})
    count = len(parts)
    if sorted(p["index"] for p in parts) != list(range(count)) or any(p["count"] != count for p in parts):
        found = sorted((p["index"], p["count"]) for p in parts)
        raise BadInput(
            f"{where}: field 'parts': expected parts 0 … {count - 1} of {count}, got (index, count) {found}"
        )
    parts.sort(key=lambda p: p["index"])

    def common(s: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in s["config"].items() if k not in PER_PART_FIELDS}

    def inputs(s: Mapping[str, Any]) -> list[tuple[str, str]]:
        return sorted((f["path"], f["sha256"]) for f in s.get("input_files", []))

    first = parts[0]["summary"]
    for p in parts[1:]:
        if common(p["summary"]) != common(first):
            raise BadInput(
                f"{p['dir'] / SUMMARY_NAME}: field 'config': differs from part 0 (not the same run)"
            )
        if inputs(p["summary"]) != inputs(first):
            raise BadInput(f"{p['dir'] / SUMMARY_NAME}: field 'input_files': differ from part 0")
    return parts


def merge_content_hash(parts: Sequence[Mapping[str, Any]], ridge: float) -> str:
    """sha256 over the parts' content hashes (in part order), the ridge and the schema version."""
    payload = json.dumps(
        {"parts": [p["summary"]["content_hash"] for p in parts], "ridge": ridge, "schema": SCHEMA_VERSION,
         "mode": "merge"},
        sort_keys=True,
    )  # fmt: skip
    return hashlib.sha256(payload.encode()).hexdigest()


def merged_split_index(
    parts: Sequence[Mapping[str, Any]], dataset: str, split: str, final_dir: Path, refs: Mapping[int, float]
) -> dict[str, Any]:
    """The index of one merged split: every part's shards, paths relative to ``final_dir``.

    Args:
        parts: From :func:`load_parts`.
        dataset: Dataset name.
        split: ``train``, ``val`` or ``test``.
        final_dir: Where the index will live (``<output_dir>/<dataset>/<split>``).
        refs: Fitted reference energies ``{Z: eV}``.
    """
    shards: list[dict[str, Any]] = []
    meta: dict[str, Any] | None = None
    first_graph = 0
    for p in parts:
        split_dir = Path(p["dir"]) / dataset / split
        index_path = split_dir / INDEX_NAME
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError) as exc:
            raise BadInput(f"{index_path}: unreadable part index ({exc})") from exc
        if meta is None:
            meta = {k: v for k, v in index["meta"].items() if k not in ("part", "eref_deferred")}
        for e in index["shards"]:
            shard_dir = split_dir / e["file"]
            shards.append(
                {
                    **e,
                    "file": os.path.relpath(shard_dir, final_dir),
                    "first_graph": first_graph,
                    "part": p["index"],
                    "sha256": {name: sha256_file(shard_dir / name) for name in e.get("files", {})},
                }
            )
            first_graph += int(e["num_graphs"])
    assert meta is not None
    meta.update(
        {
            "reference_energies": {str(z): e for z, e in sorted(refs.items())},
            "eref_from_index": True,
            "parts": len(parts),
            "split": split,
        }
    )
    return {"schema_version": SCHEMA_VERSION, "meta": meta, "num_graphs": first_graph, "shards": shards}


def merge_dataset(
    parts: Sequence[Mapping[str, Any]], dataset: str, staging: Path, out_dir: Path, ridge: float
) -> dict[str, Any]:
    """Fit references over all parts and write the merged split indexes of ``dataset`` under ``staging``.

    Args:
        parts: From :func:`load_parts`.
        dataset: Dataset name.
        staging: Directory the indexes are written to (later moved to ``out_dir``).
        out_dir: Final output directory (shard paths are made relative to ``out_dir/dataset/split``).
        ridge: Ridge strength of the reference fit (relative to the total number of structures).

    Returns:
        The dataset's summary, with the same fields as a single-task run plus ``parts``.
    """
    per_part = [p["summary"]["datasets"][dataset] for p in parts]
    kept = sum(int(d["kept"]) for d in per_part)
    if kept == 0:
        filtered = {r: sum(int(d["filtered"].get(r, 0)) for d in per_part) for r in REASONS}
        raise BadInput(f"{parts[0]['dir'] / SUMMARY_NAME}: dataset {dataset!r}: no structure left after filtering"
                       f" in any part ({filtered})")  # fmt: skip
    refs = fit_reference_energies_from_factors([d["reference_factor"] for d in per_part], ridge)
    energy, resid = RunningStats(), RunningStats()  # over the parts' shards, one at a time
    for split in SPLITS:
        index = merged_split_index(parts, dataset, split, out_dir / dataset / split, refs)
        write_json_atomic(staging / dataset / split / INDEX_NAME, index)
        for p in parts:
            for e, r in split_energies(Path(p["dir"]) / dataset / split, refs):
                energy.add(e)
                resid.add(r)
    return {
        "head_id": per_part[0]["head_id"],
        "read": sum(int(d["read"]) for d in per_part),
        "kept": kept,
        "counts": {s: sum(int(d["counts"][s]) for d in per_part) for s in SPLITS},
        "filtered": {r: sum(int(d["filtered"].get(r, 0)) for d in per_part) for r in REASONS},
        "elements": sorted({int(z) for d in per_part for z in d["elements"]}),
        "atoms": sum(int(d["atoms"]) for d in per_part),
        "edges": sum(int(d["edges"]) for d in per_part),
        "energy": energy.result(),
        "energy_per_atom_after_reference": resid.result(),
        "reference_energies": {str(z): e for z, e in sorted(refs.items())},
        "with_forces": sum(int(d["with_forces"]) for d in per_part),
        "with_stress": sum(int(d["with_stress"]) for d in per_part),
        "parts": len(parts),
    }


def part_output_files(parts: Sequence[Mapping[str, Any]], out_dir: Path) -> list[dict[str, Any]]:
    """The store files of every part (paths relative to ``out_dir``, sha256 and size from the part summary)."""
    files = []
    for p in parts:
        for f in p["summary"].get("output_files", []):
            path = Path(p["dir"]) / f["path"]
            files.append({"path": os.path.relpath(path, out_dir), "sha256": f["sha256"], "bytes": f["bytes"]})
    return files
