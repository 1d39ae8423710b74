"""Evaluate one model on each dataset's test split, on the head trained on that dataset (``python -m
models.evaluate --config C --result R``).

Config (:class:`models.contracts.evaluate.EvaluateConfig`)::

    {"checkpoint": "runs/.../best.pt", "data_root": {"demo-emt": "runs/data/demo-emt"},
     "datasets": ["demo-emt", "demo-gfn2"], "split": "test", "precision": "fp64", "output_dir": "..."}

For every dataset: the head is the one the checkpoint names after the dataset (``head_names``, written by
:mod:`models.train`), else ``dataset_heads``, else the store's; a dataset the model has no head for is listed in
``skipped`` with the reason. Each structure is predicted with forces, and stress where the split has stress
labels (periodic cells). The figures, per dataset (:class:`~models.contracts.evaluate.DatasetMetrics`):

* energy: the total-energy error divided by the atom count, MAE and RMSE in meV/atom;
* forces: every Cartesian component of every atom with force labels, MAE and RMSE in meV/Å;
* stress: every component of every labelled cell, MAE and RMSE in meV/Å^3.

A figure without labels in the split (forces of an energy-only dataset, stress of molecules) is None.

``parity.npz`` (written atomically in ``output_dir``) holds, per dataset ``D``, ``D/energy_true`` and
``D/energy_pred`` [G] (eV/atom) and ``D/force_true``, ``D/force_pred`` [n, 3] (eV/Å, the first
``max_parity_atoms`` labelled atoms): the report draws its parity plots from it.
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import checkpoint, keys
from models.appio import BadInput, main_for
from models.atomic_files import sha256_file, write_bytes_atomic
from models.contracts.evaluate import DatasetMetrics, EvaluateConfig, EvaluateResult, parse_config
from models.devices import rank_device
from models.inference import load_model
from models.nn.loss import label_flags
from models.nn.precision import cast_batch, param_dtype, precision_context
from models.training.data import dataset_head, eval_batches, open_stores

MEV = 1000.0  # meV per eV


def _errors(pred: list[np.ndarray], true: list[np.ndarray]) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(MAE, RMSE) of ``pred - true`` over every element, and both concatenated (NaN when empty)."""
    if not pred:
        return math.nan, math.nan, np.zeros(0), np.zeros(0)
    p, t = np.concatenate(pred), np.concatenate(true)
    if p.size == 0:
        return math.nan, math.nan, p, t
    err = p - t
    return float(np.abs(err).mean()), float(np.sqrt((err * err).mean())), p, t


def _mev(value: float) -> float | None:
    """eV -> meV; None for NaN (no labels)."""
    return None if math.isnan(value) else value * MEV


def evaluate_store(model: Any, store: Any, head: int, cfg: EvaluateConfig,
                   device: torch.device) -> dict[str, Any]:
    """Predict every graph of ``store`` on ``head``: per-graph energies per atom [G] eV/atom, force components of
    the labelled atoms [n, 3] eV/Å and stresses of the labelled cells [m, 3, 3] eV/Å^3, predicted and true."""
    e_pred, e_true, f_pred, f_true, s_pred, s_true = [], [], [], [], [], []
    atoms = 0
    for batch in eval_batches({"d": store}, cfg.batch_size):
        batch[keys.HEAD] = torch.full_like(batch[keys.HEAD], head)
        natoms = batch[keys.NATOMS].reshape(-1).double()
        has_s = label_flags(batch, keys.HAS_STRESS, natoms) if keys.STRESS in batch else None
        want_stress = has_s is not None and bool(has_s.any())
        dev = cast_batch(batch.clone().to(device), cfg.precision)  # PyG's to() moves in place: keep the CPU copy
        with precision_context(cfg.precision, device):
            out = model(dev, forces=True, stress=want_stress)
        atoms += int(natoms.sum())
        e_pred.append((out["energy"].detach().double().cpu() / natoms).numpy())
        e_true.append((batch[keys.ENERGY].reshape(-1).double() / natoms).numpy())
        has_f = label_flags(batch, keys.HAS_FORCES, natoms)[batch[keys.BATCH]]
        if keys.FORCES in batch and bool(has_f.any()):
            f_pred.append(out["forces"].detach().double().cpu()[has_f].numpy())
            f_true.append(batch[keys.FORCES].double()[has_f].numpy())
        if want_stress and has_s is not None:
            s_pred.append(out["stress"].detach().double().cpu()[has_s].numpy())
            s_true.append(batch[keys.STRESS].double().reshape(-1, 3, 3)[has_s].numpy())
    return {"e": (e_pred, e_true), "f": (f_pred, f_true), "s": (s_pred, s_true), "atoms": atoms}


def evaluate(cfg: EvaluateConfig, config_path: Path | str = "<config>") -> dict[str, Any]:
    """Run the evaluation of ``cfg`` (see the module docstring); returns the result dict."""
    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        device = rank_device(cfg.device)
    except ValueError as exc:
        raise BadInput(f"{config_path}: field 'device': {exc}") from exc
    try:
        ckpt = checkpoint.load(cfg.checkpoint, map_location="cpu")
    except (OSError, KeyError, ValueError) as exc:
        raise BadInput(f"{config_path}: field 'checkpoint': cannot load {cfg.checkpoint} ({exc})") from exc
    model = load_model(ckpt).to(device=device, dtype=param_dtype(cfg.precision)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    head_ids = {int(h) for h in model.head_ids}
    names = {int(h): str(n) for h, n in (ckpt.get("head_names") or {}).items()}
    by_name = {n: h for h, n in names.items()}
    stores = open_stores(cfg.data_root, cfg.datasets, cfg.split, dtype=torch.float64)
    metrics: dict[str, DatasetMetrics] = {}
    skipped: dict[str, str] = {}
    arrays: dict[str, np.ndarray] = {}
    for name in cfg.datasets:
        store = stores[name]
        head = by_name[name] if name in by_name else dataset_head(store, name, cfg.dataset_heads)
        if head not in head_ids:
            skipped[name] = f"the model has no head {head} (heads {sorted(head_ids)})"
            continue
        if len(store) == 0:
            skipped[name] = f"the {cfg.split} split is empty"
            continue
        got = evaluate_store(model, store, head, cfg, device)
        e_mae, e_rmse, ep, et = _errors(*got["e"])
        f_mae, f_rmse, fp, ft = _errors(*got["f"])
        s_mae, s_rmse, sp, _ = _errors(*got["s"])
        metrics[name] = DatasetMetrics(
            head=head, head_name=names.get(head), graphs=int(et.size), atoms=got["atoms"],
            force_atoms=int(fp.shape[0]) if fp.ndim == 2 else 0,
            stress_graphs=int(sp.shape[0]) if sp.ndim == 3 else 0,
            energy_mae_mev_per_atom=e_mae * MEV, energy_rmse_mev_per_atom=e_rmse * MEV,
            force_mae_mev_per_a=_mev(f_mae), force_rmse_mev_per_a=_mev(f_rmse),
            stress_mae_mev_per_a3=_mev(s_mae), stress_rmse_mev_per_a3=_mev(s_rmse))
        arrays[f"{name}/energy_true"], arrays[f"{name}/energy_pred"] = et, ep
        if fp.ndim == 2 and fp.shape[0]:
            arrays[f"{name}/force_true"] = ft[: cfg.max_parity_atoms]
            arrays[f"{name}/force_pred"] = fp[: cfg.max_parity_atoms]
    parity = None
    if arrays:
        out_dir = Path(cfg.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        path = out_dir / "parity.npz"
        write_bytes_atomic(path, buf.getvalue())
        parity = {"path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size}
    result = {"split": cfg.split, "datasets": {k: v.model_dump() for k, v in metrics.items()},
              "skipped": skipped, "parity": parity, "precision": cfg.precision,
              "wall_time_s": time.perf_counter() - t0}
    EvaluateResult.model_validate({"status": "ok", **result})  # a drift from the contract fails here, named
    return result


def app(raw: dict[str, Any], config_path: Path) -> dict[str, Any]:
    """``main_for`` entry."""
    return evaluate(parse_config(raw, config_path), config_path)


#: A worker may call the app inside its own process (one rank, no process state left behind).
run_in_process = app


if __name__ == "__main__":
    main_for(app, "Evaluate a model on each dataset's test split: errors per head in meV/atom and meV/Å, parity data.")
