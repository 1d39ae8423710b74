"""The multi-task model: one shared message-passing encoder, one energy head per registry head id.

Energies are per-atom head outputs summed per graph plus the dataset reference ``eref``; forces are
``-dE/dpos`` and stress ``(1/V) dE/d eps`` by autograd through edge vectors recomputed from positions. Optional
direct node heads (:mod:`models.nn.node_heads`) predict per-atom properties from the same features; with
``forces: direct`` the forces come from such a head instead of the energy's derivative.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.utils import scatter

from models import keys
from models.contracts.hyperparams import FAMILIES, parse_hyperparameters
from models.nn.geometry import apply_strain, cell_volume, edge_vectors
from models.nn.heads import MultiHead
from models.nn.node_heads import NodeHeads

__all__ = ["FAMILIES", "MultiHeadModel", "build_model", "count_parameters", "normalize_config"]


def normalize_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate a model config against its family's schema and fill in the defaults.

    Args:
        config: ``{"family": ..., "hidden": ..., ...}`` (see :mod:`models.contracts.hyperparams`).

    Returns:
        A new, complete config (JSON-serialisable) that :func:`build_model` turns into the same architecture.

    Raises:
        BadInput: naming the offending field (unknown family or key, bad value).
    """
    return parse_hyperparameters(config).model_dump(mode="json")


def _make_encoder(cfg: dict[str, Any]) -> torch.nn.Module:
    """Instantiate the encoder of ``cfg["family"]`` (imports only that family's module)."""
    common = {"hidden": cfg["hidden"], "layers": cfg["layers"], "cutoff": cfg["cutoff"], "max_z": cfg["max_z"]}
    family = cfg["family"]
    if family == "painn":
        from models.nn.painn import PaiNN

        return PaiNN(num_rbf=cfg["num_rbf"], radial_basis=cfg["radial_basis"], **common)
    if family == "schnet":
        from models.nn.schnet import SchNet

        return SchNet(num_rbf=cfg["num_rbf"], num_filters=cfg["num_filters"], **common)
    if family == "egnn":
        from models.nn.egnn import EGNN

        return EGNN(num_rbf=cfg["num_rbf"], avg_num_neighbors=cfg["avg_num_neighbors"], **common)
    if family == "dimenet++":
        from models.nn.dimenet import DimeNetPlusPlus

        return DimeNetPlusPlus(num_radial=cfg["num_radial"], num_spherical=cfg["num_spherical"],
                               int_emb_size=cfg["int_emb_size"], basis_emb_size=cfg["basis_emb_size"],
                               out_emb_channels=cfg["out_emb_channels"],
                               envelope_exponent=cfg["envelope_exponent"], **common)
    if family == "mace":
        from models.nn.mace import MACE

        return MACE(num_rbf=cfg["num_rbf"], max_ell=cfg["max_ell"], hidden_ell=cfg["hidden_ell"],
                    correlation=cfg["correlation"], avg_num_neighbors=cfg["avg_num_neighbors"], **common)
    from models.nn.pna import PNA

    return PNA(num_rbf=cfg["num_rbf"], deg=cfg["deg"], aggregators=cfg["aggregators"], scalers=cfg["scalers"],
               towers=cfg["towers"], **common)


class MultiHeadModel(torch.nn.Module):
    """Shared encoder + one energy head per registry head id.

    Args:
        config: Model config (see :func:`normalize_config`); the completed copy is kept as ``self.config``.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config: dict[str, Any] = normalize_config(config)
        self.family: str = self.config["family"]
        self.cutoff: float = self.config["cutoff"]
        self.encoder = _make_encoder(self.config)
        self.heads = MultiHead(self.config["heads"], self.config["hidden"], self.config["max_z"],
                               self.config["head_hidden"])
        self.direct_forces: bool = self.config["forces"] == "direct"
        self.node_heads = (NodeHeads(self.config["node_heads"], self.config["heads"], self.config["hidden"],
                                     self.cutoff) if self.config["node_heads"] else None)

    @property
    def head_ids(self) -> list[int]:
        """Registry head ids this model can predict."""
        return self.heads.head_ids

    def add_head(self, head_id: int, init_from: int | None = None) -> None:
        """Add an energy head for a new dataset/property (fine-tuning).

        Args:
            head_id: Registry head id of the new head.
            init_from: Copy the weights of this existing head instead of a fresh init.
        """
        self.heads.add(head_id, init_from)
        if self.node_heads is not None:
            self.node_heads.add(head_id, init_from)
        self.config["heads"] = self.heads.head_ids

    def forward(self, batch: Batch | Data, *, forces: bool = True, stress: bool = False) -> dict[str, Tensor]:
        """Predict energies (and forces, stress) of a batch of graphs.

        Args:
            batch: Graphs with the fields of :mod:`models.keys` (``z``, ``pos``, ``cell``, ``edge_index``,
                ``shift``, ``head``, ``batch``; ``eref`` optional). Edges longer than the model cutoff are
                ignored.
            forces: Also return the forces: ``-dE/dpos``, or the direct head's (``forces: direct``).
            stress: Also return the stress from the strain derivative.

        Returns:
            ``{"energy": [G] eV, "forces": [N, 3] eV/Å, "stress": [G, 3, 3] eV/Å^3 (NaN for zero-volume
            cells)}``, and each direct node head's output under its name ([N] or [N, 3]). In training mode the derivatives keep their graph (``create_graph=True``) so force and
            stress losses train the weights; in eval mode every output is detached. Forces and stress work
            under ``torch.no_grad()`` (grad is re-enabled inside) but not under ``torch.inference_mode()``.
        """
        z = batch[keys.Z]
        pos = batch[keys.POS]
        n = z.size(0)
        bvec = getattr(batch, keys.BATCH, None)
        if bvec is None:
            bvec = torch.zeros(n, dtype=torch.long, device=z.device)
        num_graphs = int(batch.num_graphs) if isinstance(batch, Batch) else 1
        cell = getattr(batch, keys.CELL, None)
        if cell is None:
            cell = pos.new_zeros(num_graphs, 3, 3)
        cell = cell.to(pos.dtype).reshape(num_graphs, 3, 3)
        edge_index = batch[keys.EDGE_INDEX]
        shift = getattr(batch, keys.SHIFT, None)
        if shift is None:
            shift = pos.new_zeros(edge_index.size(1), 3)
        autograd_forces = forces and not self.direct_forces
        need_grad = autograd_forces or stress
        no_autocast = torch.autocast(device_type=pos.device.type, enabled=False)
        with torch.enable_grad() if need_grad else contextlib.nullcontext():
            if need_grad:
                pos = pos.detach().requires_grad_(True)
            eps = None
            with no_autocast:
                if stress:
                    pos_s, cell_s, eps = apply_strain(pos, cell, bvec)
                else:
                    pos_s, cell_s = pos, cell
                vec = edge_vectors(pos_s, cell_s, edge_index, shift, bvec)
                keep = (vec.detach() ** 2).sum(dim=-1) < self.cutoff**2
                if not bool(keep.all()):
                    edge_index, vec, shift = edge_index[:, keep], vec[keep], shift[keep]
            if self.family == "dimenet++":
                h = self.encoder(z, vec, edge_index, shift)
            else:
                h = self.encoder(z, vec, edge_index)
            with no_autocast:
                head = batch[keys.HEAD].reshape(-1)
                atom_energy = self.heads(h.to(pos.dtype), z, head[bvec])
                energy = scatter(atom_energy, bvec, dim=0, dim_size=num_graphs, reduce="sum")
                eref = getattr(batch, keys.EREF, None)
                if eref is not None:
                    energy = energy + eref.to(energy.dtype)
                out: dict[str, Tensor] = {"energy": energy}
                if self.node_heads is not None:
                    nodes = self.node_heads(h.to(pos.dtype), vec, edge_index, head[bvec])
                    out.update((k, v) for k, v in nodes.items() if k != "forces" or forces)
                if need_grad:
                    inputs = ([pos] if autograd_forces else []) + ([eps] if eps is not None else [])
                    grads = torch.autograd.grad(energy.sum(), inputs, create_graph=self.training,
                                                materialize_grads=True)
                    if autograd_forces:
                        out["forces"] = -grads[0]
                    if eps is not None:
                        vol = cell_volume(cell)
                        periodic = vol > 0
                        safe = torch.where(periodic, vol, torch.ones_like(vol))
                        sigma = grads[-1] / safe.view(-1, 1, 1)
                        out["stress"] = torch.where(periodic.view(-1, 1, 1), sigma,
                                                    torch.full_like(sigma, float("nan")))
        if not self.training:
            out = {k: v.detach() for k, v in out.items()}
        return out


def build_model(config: dict[str, Any]) -> MultiHeadModel:
    """Build a :class:`MultiHeadModel` from a config (also ``model.config`` of a checkpoint).

    Raises:
        BadInput: naming the offending config field.
    """
    return MultiHeadModel(config)


def count_parameters(model: torch.nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) scalar parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
