"""The multi-task model: one shared message-passing encoder, one energy head per registry head id.

Energies are per-atom head outputs summed per graph plus the dataset reference ``eref``; forces are
``-dE/dpos`` and stress ``(1/V) dE/d eps`` by autograd through edge vectors recomputed from positions. Optional
direct node heads (:mod:`models.nn.node_heads`) predict per-atom properties from the same features; with
``forces: direct`` the forces come from such a head instead of the energy's derivative.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.utils import scatter

from models import keys
from models.appio import BadInput
from models.nn.geometry import apply_strain, cell_volume, edge_vectors
from models.nn.heads import MultiHead
from models.nn.node_heads import NODE_KINDS, NodeHeads

FAMILIES: tuple[str, ...] = ("painn", "schnet", "egnn", "dimenet++", "mace", "pna")

COMMON_DEFAULTS: dict[str, Any] = {
    "hidden": 128,
    "layers": 4,
    "cutoff": 5.0,
    "num_rbf": 20,
    "heads": [0],
    "max_z": 100,
    "head_hidden": None,
    "forces": "conservative",
    "node_heads": [],
}

#: Force modes: ``conservative`` (``-dE/dpos``, energy-consistent, a double backward to train) or ``direct`` (a
#: vector node head named ``forces``: one backward, not conservative).
FORCE_MODES: tuple[str, ...] = ("conservative", "direct")

#: Names a node head cannot take (outputs of the model itself).
_RESERVED_OUTPUTS = ("energy", "stress")

FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "painn": {},
    "schnet": {"num_filters": None},
    "egnn": {"avg_num_neighbors": 32.0},
    "dimenet++": {"num_radial": 6, "num_spherical": 7, "int_emb_size": 64, "basis_emb_size": 8,
                  "out_emb_channels": 256, "envelope_exponent": 5},
    "mace": {"max_ell": 2, "hidden_ell": 1, "correlation": 2, "avg_num_neighbors": 32.0},
    "pna": {"deg": None, "aggregators": ["mean", "min", "max", "std"],
            "scalers": ["identity", "amplification", "attenuation"], "towers": 1},
}


def normalize_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate a model config and fill in the defaults of its family.

    Args:
        config: ``{"family": ..., "hidden": ..., ...}`` (see :data:`COMMON_DEFAULTS`, :data:`FAMILY_DEFAULTS`).

    Returns:
        A new, complete config (JSON-serialisable) that :func:`build_model` turns into the same architecture.

    Raises:
        BadInput: naming the offending field (unknown family or key, bad value).
    """
    if not isinstance(config, dict):
        raise BadInput("model config: must be a JSON object")
    family = str(config.get("family", "")).lower()
    if family not in FAMILIES:
        raise BadInput(f"model config: field 'family' is {config.get('family')!r}; choose one of {FAMILIES}")
    out: dict[str, Any] = {"family": family, **copy.deepcopy(COMMON_DEFAULTS),
                           **copy.deepcopy(FAMILY_DEFAULTS[family])}
    unknown = sorted(set(config) - set(out))
    if unknown:
        raise BadInput(f"model config: unknown field(s) {unknown} for family {family!r}; known: {sorted(out)}")
    out.update({k: copy.deepcopy(v) for k, v in config.items() if k != "family"})
    for key in ("hidden", "layers", "num_rbf", "max_z"):
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < 1:
            raise BadInput(f"model config: field {key!r} must be a positive integer, got {out[key]!r}")
    if not isinstance(out["cutoff"], int | float) or out["cutoff"] <= 0:
        raise BadInput(f"model config: field 'cutoff' must be a positive number, got {out['cutoff']!r}")
    out["cutoff"] = float(out["cutoff"])
    heads = out["heads"]
    if (not isinstance(heads, list) or not heads or len(set(heads)) != len(heads)
            or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 0 for h in heads)):
        raise BadInput(f"model config: field 'heads' must be a non-empty list of distinct ints >= 0, got {heads!r}")
    _check_node_heads(out)
    if family == "mace" and out["correlation"] not in (1, 2):
        raise BadInput(f"model config: field 'correlation' must be 1 or 2 for mace, got {out['correlation']!r}")
    if family == "pna" and out["hidden"] % out["towers"]:
        raise BadInput("model config: field 'towers' must divide 'hidden'")
    return out


def _check_node_heads(out: dict[str, Any]) -> None:
    """Validate ``forces`` and ``node_heads`` in place (``forces: direct`` adds the ``forces`` vector head)."""
    if out["forces"] not in FORCE_MODES:
        raise BadInput(f"model config: field 'forces' must be one of {FORCE_MODES}, got {out['forces']!r}")
    specs = out["node_heads"]
    if not isinstance(specs, list):
        raise BadInput(f"model config: field 'node_heads' must be a list, got {specs!r}")
    names: list[str] = []
    for k, spec in enumerate(specs):
        where = f"model config: field 'node_heads[{k}]'"
        if not isinstance(spec, dict) or set(spec) != {"name", "kind"}:
            raise BadInput(f"{where} must be an object with exactly 'name' and 'kind', got {spec!r}")
        name, kind = spec["name"], spec["kind"]
        if not isinstance(name, str) or not name.isidentifier():
            raise BadInput(f"{where}.name must be an identifier, got {name!r}")
        if name in _RESERVED_OUTPUTS or name in names:
            raise BadInput(f"{where}.name {name!r} is reserved or repeated")
        if kind not in NODE_KINDS:
            raise BadInput(f"{where}.kind must be one of {NODE_KINDS}, got {kind!r}")
        if name == "forces" and (kind != "vector" or out["forces"] != "direct"):
            raise BadInput(f"{where}: a 'forces' node head is a vector head of a 'forces: direct' model")
        names.append(name)
    if out["forces"] == "direct" and "forces" not in names:
        out["node_heads"] = [*specs, {"name": "forces", "kind": "vector"}]


def _make_encoder(cfg: dict[str, Any]) -> torch.nn.Module:
    """Instantiate the encoder of ``cfg["family"]`` (imports only that family's module)."""
    common = {"hidden": cfg["hidden"], "layers": cfg["layers"], "cutoff": cfg["cutoff"], "max_z": cfg["max_z"]}
    family = cfg["family"]
    if family == "painn":
        from models.nn.painn import PaiNN

        return PaiNN(num_rbf=cfg["num_rbf"], **common)
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
