"""``campaign export MODEL --out DIR``: a trained model as a self-contained package, usable without the campaign
database or the recipe.

The package (written to a temporary directory next to ``DIR``, then renamed into place: a failed export leaves
nothing, and an existing ``DIR`` is never overwritten):

* ``model.pt`` — the checkpoint (weights, model schema, each head's element reference energies, and the head
  names and graph settings: filled in from the database when an older checkpoint lacks them);
* ``model.json`` — the manifest: family and hyperparameters, every head with its dataset, level of theory,
  units and content hash, the graph settings, the precision it was trained in, its metrics, and the sha256 of
  every file of the package;
* ``MODEL_CARD.md`` — the same for people: lineage (trial, promotion, datasets), metrics per head, cost.

Load it with :class:`models.ase_calculator.ModelCalculator` (``ModelCalculator("DIR/model.pt",
head="demo-emt")``) or :meth:`models.inference.Predictor.from_checkpoint`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from campaign.errors import CampaignInputError
from campaign.lineage import walk
from db.readonly import as_datetime, as_json, readonly_snapshot
from models.atomic_files import sha256_file
from sites.facts import node_share

FORMAT = "campaign-model/1"


def _facts(model_id: int, db: str | None) -> dict[str, Any]:
    """Everything the manifest and the card say, read in one snapshot."""
    with readonly_snapshot(db) as snap:
        rows = snap.rows(
            "SELECT m.name, m.role, m.family, m.hyperparameters, m.metrics, m.created_at, c.name, a.path, a.sha256, "
            "tr.hpo, tr.number, tr.objective, tr.status FROM models m JOIN campaigns c ON c.id = m.campaign_id "
            "LEFT JOIN artifacts a ON a.id = m.checkpoint_id LEFT JOIN trials tr ON tr.id = m.trial_id "
            "WHERE m.id = :id", {"id": model_id})
        if not rows:
            raise CampaignInputError(f"no model with id {model_id} in the campaign database")
        (name, role, family, hp, metrics, created, campaign, ckpt, ckpt_sha, hpo, number, objective,
         trial_status) = rows[0]
    lin = walk(("model", str(model_id)), db=db)
    dataset_ids = [e.node[1] for e in lin.edges if e.node[0] == "dataset"]
    task_ids = [e.node[1] for e in lin.edges if e.node[0] == "task"]
    with readonly_snapshot(db) as snap:
        datasets = []
        for did in dict.fromkeys(dataset_ids):
            for dname, head, lot, fid, units, counts, chash, summary in snap.rows(
                    "SELECT name, head_id, level_of_theory, fidelity, units, counts, content_hash, summary "
                    "FROM datasets WHERE id = :id", {"id": int(did)}):
                datasets.append({"dataset": dname, "head": int(head), "level_of_theory": lot, "fidelity": fid,
                                 "units": as_json(units) or {}, "counts": as_json(counts) or {},
                                 "content_hash": chash,
                                 "reference_energies": (as_json(summary) or {}).get("reference_energies")})
        cost = {"attempts": 0, "node_hours": 0.0, "gpu_hours": 0.0}
        for tid in dict.fromkeys(task_ids):
            for site, nodes, cpus, gpus, started, ended in snap.rows(
                    "SELECT site, nodes, cpus, gpus, started_at, ended_at FROM attempts WHERE task_id = :t",
                    {"t": tid}):
                a, b = as_datetime(started), as_datetime(ended)
                if a is None or b is None:
                    continue
                hours = max(0.0, (b - a).total_seconds()) / 3600
                cost["attempts"] += 1
                cost["node_hours"] += hours * node_share(str(site), int(nodes or 1), int(cpus or 0), int(gpus or 0))
                cost["gpu_hours"] += hours * int(gpus or 0)
    if not ckpt:
        raise CampaignInputError(f"model {model_id} has no checkpoint recorded: nothing to export")
    return {"id": model_id, "name": name, "role": role, "family": family, "hyperparameters": as_json(hp) or {},
            "metrics": as_json(metrics) or {}, "created_at": str(as_datetime(created)), "campaign": campaign,
            "checkpoint": ckpt, "checkpoint_sha256": ckpt_sha,
            "trial": None if hpo is None else {"hpo": hpo, "number": number, "objective": objective,
                                               "status": trial_status},
            "datasets": datasets, "cost": cost, "lineage": lin.rows()}


def export_model(model_id: int, out: str | os.PathLike[str], *, db: str | None = None) -> Path:
    """Write the package of model ``model_id`` to ``out`` (which must not exist). Returns ``out``.

    Raises:
        CampaignInputError: no such model, no checkpoint, the checkpoint file missing or changed since it was
            recorded, or ``out`` exists.
    """
    import torch

    from models import checkpoint

    dest = Path(out)
    if dest.exists():
        raise CampaignInputError(f"--out {dest}: already exists (an export never overwrites; remove it or choose "
                                 "another directory)")
    if not dest.parent.is_dir():
        raise CampaignInputError(f"--out {dest}: directory {dest.parent} does not exist")
    facts = _facts(model_id, db)
    src = Path(facts["checkpoint"])
    try:
        ckpt = checkpoint.load(src, map_location="cpu", expected_sha256=facts["checkpoint_sha256"])
    except (OSError, ValueError, RuntimeError) as exc:
        raise CampaignInputError(f"model {model_id}: cannot read its checkpoint {src}: {exc}") from exc
    heads = {int(h) for h in ckpt["model_config"].get("heads", [])}
    by_head = {d["head"]: d for d in facts["datasets"] if d["head"] in heads}
    ckpt.setdefault("head_names", {str(h): d["dataset"] for h, d in sorted(by_head.items())})
    graph = ckpt.get("graph") or {"cutoff": float(ckpt["model_config"].get("cutoff", 5.0)), "max_neighbours": None}
    ckpt["graph"] = graph
    params = sum(int(v.numel()) for v in ckpt["model_state"].values())
    dtype = str(next((v.dtype for v in ckpt["model_state"].values() if v.is_floating_point()), torch.float32))
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        payload: dict[str, Any] = {k: ckpt[k] for k in ("model_config", "model_state", "head_references",
                                                        "head_names", "graph") if k in ckpt}
        checkpoint.save(payload, tmp / "model.pt")
        manifest = {
            "format": FORMAT, "model": {k: facts[k] for k in ("id", "name", "role", "family", "campaign")},
            "model_config": ckpt["model_config"], "parameters": params, "weights_dtype": dtype,
            "heads": [{"id": h, **({k: v for k, v in by_head[h].items() if k != "head"} if h in by_head else {})}
                      for h in sorted(heads)],
            "graph": graph, "units": {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å^3", "length": "Å"},
            "metrics": facts["metrics"], "trial": facts["trial"], "cost": facts["cost"],
            "source_checkpoint": {"path": str(src), "sha256": facts["checkpoint_sha256"]},
        }
        (tmp / "MODEL_CARD.md").write_text(model_card(facts, manifest))
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest["files"] = files
        (tmp / "model.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _fmt(v: Any, unit: str = "") -> str:
    if isinstance(v, float):
        return f"{v:.4g}{(' ' + unit) if unit else ''}"
    return "–" if v is None else str(v)


def model_card(facts: dict[str, Any], manifest: dict[str, Any]) -> str:
    """The model card (Markdown), from the database's facts about the model."""
    m = facts["metrics"]
    lines = [f"# {facts['name']} ({facts['family']})", "",
             f"Model {facts['id']} of campaign `{facts['campaign']}`, role **{facts['role']}**, "
             f"{manifest['parameters']:,} parameters ({manifest['weights_dtype']} weights), exported from the "
             "campaign database.", "", "## Heads", "",
             "| head | dataset | level of theory | structures | content hash |", "|---|---|---|---|---|"]
    for h in manifest["heads"]:
        n = sum(v for v in (h.get("counts") or {}).values() if isinstance(v, int))
        lines.append(f"| {h['id']} | {h.get('dataset', '–')} | {h.get('level_of_theory') or '–'} | {n or '–'} | "
                     f"`{(h.get('content_hash') or '–')[:16]}` |")
    lines += ["", "Energies in eV (total, including each head's element reference energies), forces in eV/Å, "
              "stress in eV/Å³.", "", "## Graph", "",
              f"Radius {manifest['graph'].get('cutoff')} Å, neighbour cap "
              f"{manifest['graph'].get('max_neighbours') or 'none'} (a cap never splits a shell of equidistant "
              "neighbours); build evaluation graphs the same way (the calculator does).", "", "## Metrics", ""]
    lines.append(f"Objective (best-epoch validation loss: MSE(E/atom) [eV²] + w·MSE(F) [eV²/Å²], lower is "
                 f"better): {_fmt(m.get('objective'))}, best epoch {_fmt(m.get('best_epoch'))}.")
    per_head = m.get("best_val_metrics") or {}
    if per_head:
        names = {str(h["id"]): h.get("dataset", str(h["id"])) for h in manifest["heads"]}
        lines += ["", "| head | dataset | energy MAE (eV/atom) | force MAE (eV/Å) |", "|---|---|---|---|"]
        for hid, met in sorted(per_head.items()):
            lines.append(f"| {hid} | {names.get(str(hid), '–')} | {_fmt(met.get('energy_mae_per_atom'))} | "
                         f"{_fmt(met.get('force_mae'))} |")
        lines += ["", "(validation split, best epoch of the training run)"]
    test = m.get("test") or {}
    if test:
        lines += ["", f"On the {m.get('test_split', 'test')} split of each dataset (the evaluate stage):", "",
                  "| head | dataset | structures | energy MAE (meV/atom) | energy RMSE (meV/atom) | force MAE (meV/Å) "
                  "| force RMSE (meV/Å) | stress MAE (meV/Å³) |", "|---|---|---|---|---|---|---|---|"]
        for dataset, d in sorted(test.items()):
            lines.append(f"| {d.get('head')} | {dataset} | {d.get('graphs')} | "
                         + " | ".join(_fmt(d.get(k)) for k in ("energy_mae_mev_per_atom", "energy_rmse_mev_per_atom",
                                                                "force_mae_mev_per_a", "force_rmse_mev_per_a",
                                                                "stress_mae_mev_per_a3")) + " |")
    else:
        lines += ["", "No test-split evaluation is recorded: add `evaluate: {}` to the recipe's stages."]
    tr = facts["trial"]
    lines += ["", "## Lineage", ""]
    if tr is not None:
        lines.append(f"- HPO trial {tr['hpo']} #{tr['number']} ({tr['status']}, objective {_fmt(tr['objective'])})"
                     + (f", promoted for: {', '.join(m.get('reasons', []))}" if m.get("reasons") else ""))
    for h in manifest["heads"]:
        if "dataset" in h:
            lines.append(f"- dataset {h['dataset']}: {h.get('level_of_theory') or 'level of theory not recorded'}, "
                         f"content hash `{h.get('content_hash')}`")
    lines.append(f"- `campaign lineage {facts['id']}` on the campaign database shows every step.")
    c = facts["cost"]
    lines += ["", "## Cost", "",
              f"{c['attempts']} attempts upstream of this model, {c['node_hours']:.3g} node-hours, "
              f"{c['gpu_hours']:.3g} GPU-hours.", "", "## Use", "",
              "```python", "from models.ase_calculator import ModelCalculator",
              f"atoms.calc = ModelCalculator(\"model.pt\", head=\"{next((h['dataset'] for h in manifest['heads'] if 'dataset' in h), 0)}\")",
              "```", "", "The sha256 of every file of this package is in `model.json` (`files`)."]
    return "\n".join(lines) + "\n"
