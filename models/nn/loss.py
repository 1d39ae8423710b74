"""Multi-task loss: ``sum_d w_d (energy-per-atom loss_d + force_weight * force loss_d [+ stress_weight * ...]
[+ sum_n node_weight_n * node loss_{d,n}])``.

Every dataset/head ``d`` present in the batch contributes its mean per-graph energy-per-atom loss and its mean
per-component force loss over the atoms of graphs with ``has_forces`` (none otherwise). The per-head metrics are
batch sums divided by counts; aggregate them over batches weighted by ``n_graphs`` / ``n_force_atoms``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.utils import scatter

from models import keys

ENERGY_LOSSES: tuple[str, ...] = ("mse", "mae", "huber")


def _elementwise(pred: Tensor, target: Tensor, kind: str) -> Tensor:
    if kind == "mse":
        return F.mse_loss(pred, target, reduction="none")
    if kind == "mae":
        return F.l1_loss(pred, target, reduction="none")
    if kind == "huber":
        return F.huber_loss(pred, target, reduction="none", delta=0.01)
    raise ValueError(f"energy_loss {kind!r} unknown; choose one of {ENERGY_LOSSES}")


def label_flags(batch: Batch | Data, key: str, like: Tensor) -> Tensor:
    """[G] bool: which graphs of ``batch`` carry the label flagged by ``key`` (``has_forces``, ``has_stress``…);
    all of them when the batch has no such flag. ``like``: a [G] tensor on the batch's device."""
    value = getattr(batch, key, None)
    if value is None:
        return torch.ones_like(like, dtype=torch.bool)
    return value.reshape(-1).to(torch.bool)


def multitask_loss(pred: dict[str, Tensor], batch: Batch | Data, *, head_weights: dict[int, float] | None = None,
                   force_weight: float = 10.0, energy_loss: str = "mse", stress_weight: float = 0.0,
                   node_weights: Mapping[str, float] | None = None,
                   ) -> tuple[Tensor, dict[int, dict[str, Tensor]]]:
    """Weighted sum of per-head energy-per-atom and force losses.

    Args:
        pred: Model output: ``"energy"`` [G] eV, optionally ``"forces"`` [N, 3] eV/Å and ``"stress"`` [G, 3, 3].
        batch: The batch with labels ``energy`` [G], ``forces`` [N, 3], ``head`` [G], ``natoms`` [G],
            ``has_forces`` [G] (default all True), ``stress`` / ``has_stress`` [G] (used when
            ``stress_weight > 0``), ``batch`` [N].
        head_weights: ``w_d`` per head id (missing heads weigh 1.0).
        force_weight: Weight of the force loss relative to the energy-per-atom loss.
        energy_loss: ``"mse"``, ``"mae"`` or ``"huber"`` (delta 0.01); the same form is used for forces.
        stress_weight: Weight of a stress loss (graphs with ``has_stress``), 0 to skip.
        node_weights: ``{name: weight}`` of direct node heads (:mod:`models.nn.node_heads`) other than ``forces``:
            each head's output ``pred[name]`` ([N] or [N, 3]) against the batch's per-atom ``name`` field, on the
            atoms of graphs with ``has_<name>`` (all when absent), mean per atom (and component) per head.

    Returns:
        ``(loss, metrics)``: the scalar loss, and per head id ``{"energy_mae_per_atom" (eV/atom),
        "force_mae" (eV/Å, 0 when the head has no force labels in the batch), "loss", "n_graphs",
        "n_force_atoms"}`` (detached tensors).
    """
    head = batch[keys.HEAD].reshape(-1)
    energy_true = batch[keys.ENERGY].reshape(-1)
    dtype = energy_true.dtype
    energy_pred = pred["energy"].to(dtype)
    natoms = batch[keys.NATOMS].reshape(-1).to(dtype)
    uniq, inv = torch.unique(head, return_inverse=True)
    n_heads = uniq.numel()

    err_pa = (energy_pred - energy_true) / natoms
    e_loss_g = _elementwise(err_pa, torch.zeros_like(err_pa), energy_loss)
    n_graphs = scatter(torch.ones_like(err_pa), inv, dim=0, dim_size=n_heads, reduce="sum")
    e_loss = scatter(e_loss_g, inv, dim=0, dim_size=n_heads, reduce="sum") / n_graphs
    e_mae = scatter(err_pa.detach().abs(), inv, dim=0, dim_size=n_heads, reduce="sum") / n_graphs

    f_loss = torch.zeros_like(e_loss)
    f_mae = torch.zeros_like(e_loss)
    n_force = torch.zeros_like(e_loss)
    if "forces" in pred and force_weight != 0.0:
        bvec = batch[keys.BATCH]
        has_f = label_flags(batch, keys.HAS_FORCES, energy_true)
        idx = torch.nonzero(has_f[bvec]).squeeze(1)
        if idx.numel():
            f_pred = pred["forces"].index_select(0, idx).to(dtype)
            f_true = batch[keys.FORCES].index_select(0, idx).to(dtype)
            atom_head = inv[bvec.index_select(0, idx)]
            per_atom = _elementwise(f_pred, f_true, energy_loss).mean(dim=-1)
            abs_atom = (f_pred.detach() - f_true).abs().mean(dim=-1)
            ones = torch.ones_like(per_atom)
            n_force = scatter(ones, atom_head, dim=0, dim_size=n_heads, reduce="sum")
            denom = n_force.clamp(min=1.0)
            f_loss = scatter(per_atom, atom_head, dim=0, dim_size=n_heads, reduce="sum") / denom
            f_mae = scatter(abs_atom, atom_head, dim=0, dim_size=n_heads, reduce="sum") / denom

    s_loss = torch.zeros_like(e_loss)
    if stress_weight != 0.0 and "stress" in pred:
        has_s = label_flags(batch, keys.HAS_STRESS, energy_true)
        gidx = torch.nonzero(has_s).squeeze(1)
        if gidx.numel():
            s_pred = pred["stress"].index_select(0, gidx).to(dtype).reshape(-1, 9)
            s_true = batch[keys.STRESS].reshape(-1, 9).index_select(0, gidx).to(dtype)
            per_graph = _elementwise(s_pred, s_true, energy_loss).mean(dim=-1)
            g_head = inv.index_select(0, gidx)
            n_s = scatter(torch.ones_like(per_graph), g_head, dim=0, dim_size=n_heads, reduce="sum")
            s_loss = scatter(per_graph, g_head, dim=0, dim_size=n_heads, reduce="sum") / n_s.clamp(min=1.0)

    n_loss = torch.zeros_like(e_loss)
    for name, weight in (node_weights or {}).items():
        target = getattr(batch, name, None)
        if weight == 0.0 or name not in pred or target is None:
            continue
        bvec = batch[keys.BATCH]
        idx = torch.nonzero(label_flags(batch, f"has_{name}", energy_true)[bvec]).squeeze(1)
        if idx.numel():
            y_pred = pred[name].index_select(0, idx).to(dtype)
            y_true = target.index_select(0, idx).to(dtype).reshape(y_pred.shape)
            per_atom = _elementwise(y_pred, y_true, energy_loss).reshape(idx.numel(), -1).mean(dim=-1)
            atom_head = inv[bvec.index_select(0, idx)]
            count = scatter(torch.ones_like(per_atom), atom_head, dim=0, dim_size=n_heads, reduce="sum")
            n_loss = n_loss + weight * scatter(per_atom, atom_head, dim=0, dim_size=n_heads, reduce="sum") / count.clamp(min=1.0)

    weights = torch.tensor([float((head_weights or {}).get(int(h), 1.0)) for h in uniq.tolist()],
                           dtype=dtype, device=e_loss.device)
    per_head = e_loss + force_weight * f_loss + stress_weight * s_loss + n_loss
    loss = (weights * per_head).sum()
    metrics = {
        int(h): {
            "energy_mae_per_atom": e_mae[k].detach(),
            "force_mae": f_mae[k].detach(),
            "loss": per_head[k].detach(),
            "n_graphs": n_graphs[k].detach(),
            "n_force_atoms": n_force[k].detach(),
        }
        for k, h in enumerate(uniq.tolist())
    }
    return loss, metrics
