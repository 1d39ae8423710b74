"""Inference for screening: every head's energy (and forces) of a batch from ONE encoder pass.

:class:`Predictor` runs the shared encoder once per batch, then all selected heads in one batched pass (the
heads' MLP weights are stacked into ``[H, ...]`` tensors and applied with ``einsum``), giving energies
``[G, H]``. Forces per head are ``F_h = -dE_h/dpos``. The sum-over-heads trick (one backward of
``sum_h E_h``) gives only ``-d(sum_h E_h)/dpos``, not per-head forces, so it is NOT used. Instead the graph of
the single forward pass is differentiated once per selected head (``retain_graph=True``, ``force_method=
"loop"``, the default), or all heads at once with ``is_grads_batched=True`` (``force_method="vmap"``: one
vmapped backward with ``H`` one-hot cotangents). On CPU the loop measured faster than the vmapped backward
(PaiNN, 128 features, 4 heads: 0.73 s vs 1.09 s per 16 structures, 1 thread), so it is the default. Either
way the encoder's forward runs once per batch; with ``H`` heads the cost is one forward + ``H`` backward passes
instead of ``H`` forwards + ``H`` backwards. Per-head forces are needed only when several heads are screened;
``heads=[h]`` costs the same as the plain model.

Energies include each head's element reference energies (``sum_i ref_h[z_i]``) when the checkpoint carries
them (``head_references``, written by :mod:`models.train`); otherwise the batch's ``eref`` is added to every
head.

Large sets are processed in contiguous chunks whose atom count stays under an atom budget
(:func:`atom_budget_chunks`, :meth:`Predictor.predict_store`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from models import checkpoint, keys
from models.nn.geometry import edge_vectors
from models.nn.model import MultiHeadModel, build_model
from models.nn.precision import cast_batch, param_dtype, precision_context


def atom_budget_chunks(natoms: Sequence[int] | np.ndarray, max_atoms: int) -> list[tuple[int, int]]:
    """Split graphs ``0..G-1`` into contiguous ``(start, stop)`` chunks of at most ``max_atoms`` atoms
    (a single graph larger than the budget gets a chunk of its own).

    Args:
        natoms: [G] atoms per graph.
        max_atoms: Atom budget per chunk.

    Returns:
        Chunks covering every graph in order.
    """
    chunks: list[tuple[int, int]] = []
    start, count = 0, 0
    for g, n in enumerate(np.asarray(natoms, dtype=np.int64).tolist()):
        if count and count + n > max_atoms:
            chunks.append((start, g))
            start, count = g, 0
        count += n
    if count or start < len(natoms):
        chunks.append((start, len(natoms)))
    return [c for c in chunks if c[1] > c[0]]


def load_model(ckpt: dict[str, Any]) -> MultiHeadModel:
    """Rebuild the model of a loaded checkpoint, in the dtype its weights were saved in (loading fp64 weights
    into a float32 model would round them)."""
    model = build_model(dict(ckpt["model_config"]))
    state = ckpt["model_state"]
    dtype = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)
    model = model.to(dtype)
    model.load_state_dict(state)
    return model


class _StackedHeads(torch.nn.Module):
    """The ``EnergyHead`` s of a model as stacked tensors, applied to all atoms for all heads at once."""

    def __init__(self, heads: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.stack([h.mlp[0].weight.t() for h in heads]))  # [H, D, W]
        self.b1 = torch.nn.Parameter(torch.stack([h.mlp[0].bias for h in heads]))  # [H, W]
        self.w2 = torch.nn.Parameter(torch.stack([h.mlp[2].weight[0] for h in heads]))  # [H, W]
        self.b2 = torch.nn.Parameter(torch.stack([h.mlp[2].bias[0] for h in heads]))  # [H]
        self.scale = torch.nn.Parameter(torch.stack([h.scale.weight[:, 0] for h in heads]))  # [H, Zmax+1]
        self.shift = torch.nn.Parameter(torch.stack([h.shift.weight[:, 0] for h in heads]))  # [H, Zmax+1]
        self.act = heads[0].mlp[1]

    def forward(self, h: Tensor, z: Tensor) -> Tensor:
        """Args: h: [N, D] atom features; z: [N]. Returns [N, H] atomic energies, eV."""
        a = self.act(torch.einsum("nd,hdw->nhw", h, self.w1) + self.b1)
        e = torch.einsum("nhw,hw->nh", a, self.w2) + self.b2
        return e * self.scale[:, z].t() + self.shift[:, z].t()


def _stackable(head: torch.nn.Module) -> bool:
    mlp = getattr(head, "mlp", None)
    return (
        isinstance(mlp, torch.nn.Sequential)
        and len(mlp) == 3
        and isinstance(mlp[0], torch.nn.Linear)
        and isinstance(mlp[2], torch.nn.Linear)
        and mlp[2].out_features == 1
        and hasattr(head, "scale")
        and hasattr(head, "shift")
    )


class Predictor:
    """Energies and per-head forces of every selected head, fused over heads (see module docstring)."""

    def __init__(
        self,
        model: MultiHeadModel,
        *,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        head_references: dict[int, dict[int, float]] | None = None,
        force_method: str = "loop",
    ) -> None:
        """Args:
        model: A trained :class:`~models.nn.model.MultiHeadModel`.
        device: Where to run.
        precision: ``fp64`` | ``fp32`` | ``bf16``.
        head_references: ``{head_id: {Z: eV}}`` element reference energies of each head's dataset.
        force_method: ``"loop"`` (one backward per head on the retained graph) or ``"vmap"`` (one batched
            backward, ``is_grads_batched``).

        Note: the model is put in eval mode and its parameters stop requiring gradients.
        """
        if force_method not in ("loop", "vmap"):
            raise ValueError(f"force_method must be 'loop' or 'vmap', not {force_method!r}")
        self.force_method = force_method
        self.device = torch.device(device)
        self.precision = precision
        self.dtype = param_dtype(precision)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.head_ids: list[int] = [int(h) for h in model.head_ids]
        modules = [model.heads.heads[str(h)] for h in self.head_ids]
        self._stacked = _StackedHeads(modules).to(self.device) if all(map(_stackable, modules)) else None
        if self._stacked is not None:
            self._stacked.requires_grad_(False)
        self._refs: Tensor | None = None
        if head_references:
            max_z = int(model.config["max_z"])
            table = torch.zeros(len(self.head_ids), max_z + 1, dtype=torch.float64)
            for k, h in enumerate(self.head_ids):
                for zz, e in (head_references.get(h) or head_references.get(str(h)) or {}).items():  # type: ignore[call-overload]
                    table[k, int(zz)] = float(e)
            self._refs = table.to(self.device, self.dtype)

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike[str], device: str | torch.device = "cpu", precision: str = "fp32"
    ) -> Predictor:
        """Rebuild the model from a checkpoint (sha256-verified) with no other input."""
        ckpt = checkpoint.load(path, map_location="cpu")
        model = load_model(ckpt)
        refs = ckpt.get("head_references")
        refs = {int(h): {int(z): float(e) for z, e in r.items()} for h, r in refs.items()} if refs else None
        return cls(model, device=device, precision=precision, head_references=refs)

    # ------------------------------------------------------------------------------------------------------
    def _atom_energies(self, h: Tensor, z: Tensor, cols: list[int]) -> Tensor:
        if self._stacked is not None:
            e = self._stacked(h, z)
            return e if len(cols) == len(self.head_ids) else e[:, cols]
        heads = self.model.heads.heads
        return torch.stack([heads[str(self.head_ids[c])](h, z) for c in cols], dim=1)

    def predict(
        self, batch: Batch, heads: Sequence[int] | None = None, forces: bool = True
    ) -> dict[str, Any]:
        """Predict a batch for several heads.

        Args:
            batch: Graphs with ``z``, ``pos``, ``cell``, ``edge_index``, ``shift``, ``batch`` (``eref`` used only
                without stored head references).
            heads: Head ids to evaluate (default: all of the model's).
            forces: Also return per-head forces.

        Returns:
            ``{"heads": [H] ids, "energy": [G, H] eV, "forces": [N, H, 3] eV/Å or None}`` (detached).
        """
        wanted = self.head_ids if heads is None else [int(h) for h in heads]
        unknown = sorted(set(wanted) - set(self.head_ids))
        if unknown:
            raise ValueError(f"heads {unknown} are not in the model (it has {self.head_ids})")
        cols = [self.head_ids.index(h) for h in wanted]
        batch = cast_batch(batch.to(self.device), self.precision)
        z, pos = batch[keys.Z], batch[keys.POS]
        n = z.size(0)
        bvec = getattr(batch, keys.BATCH, None)
        if bvec is None:
            bvec = torch.zeros(n, dtype=torch.long, device=self.device)
        num_graphs = int(batch.num_graphs) if isinstance(batch, Batch) else 1
        cell = getattr(batch, keys.CELL, None)
        cell = (
            pos.new_zeros(num_graphs, 3, 3) if cell is None else cell.to(pos.dtype).reshape(num_graphs, 3, 3)
        )
        edge_index = batch[keys.EDGE_INDEX]
        shift = getattr(batch, keys.SHIFT, None)
        if shift is None:
            shift = pos.new_zeros(edge_index.size(1), 3)
        no_autocast = torch.autocast(device_type=self.device.type, enabled=False)
        with torch.enable_grad() if forces else torch.no_grad():
            if forces:
                pos = pos.detach().requires_grad_(True)
            with no_autocast:
                vec = edge_vectors(pos, cell, edge_index, shift, bvec)
                keep = (vec.detach() ** 2).sum(dim=-1) < self.model.cutoff**2
                if not bool(keep.all()):
                    edge_index, vec, shift = edge_index[:, keep], vec[keep], shift[keep]
            with precision_context(self.precision, self.device):
                if self.model.family == "dimenet++":
                    h = self.model.encoder(z, vec, edge_index, shift)
                else:
                    h = self.model.encoder(z, vec, edge_index)
            with no_autocast:
                atom_e = self._atom_energies(h.to(pos.dtype), z, cols)  # [N, H]
                energy = scatter(atom_e, bvec, dim=0, dim_size=num_graphs, reduce="sum")  # [G, H]
                if self._refs is not None:
                    ref = self._refs[cols][:, z].t()  # [N, H]
                    energy = energy + scatter(ref, bvec, dim=0, dim_size=num_graphs, reduce="sum")
                elif getattr(batch, keys.EREF, None) is not None:
                    energy = energy + batch[keys.EREF].to(energy.dtype).view(-1, 1)
                out: dict[str, Any] = {"heads": wanted, "energy": energy.detach(), "forces": None}
                if forces:
                    out["forces"] = self._per_head_forces(energy, pos)
        return out

    def _per_head_forces(self, energy: Tensor, pos: Tensor) -> Tensor:
        """[N, H, 3] = -dE_h/dpos for every head column of ``energy`` [G, H]."""
        total = energy.sum(dim=0)  # [H]; graphs are independent, so d(sum_g E_gh)/dpos_i = dE_{g(i)h}/dpos_i
        k = total.numel()
        g: Tensor | None = None
        if self.force_method == "vmap" and k > 1:
            eye = torch.eye(k, dtype=total.dtype, device=total.device)
            try:
                (g,) = torch.autograd.grad(total, pos, grad_outputs=eye, is_grads_batched=True)  # [H, N, 3]
            except RuntimeError:  # an operator without a batching rule: fall back to the loop
                g = None
        if g is None:
            g = torch.stack([torch.autograd.grad(total[c], pos, retain_graph=c < k - 1)[0] for c in range(k)])
        return -g.transpose(0, 1).contiguous()

    def predict_store(
        self,
        store: Any,
        *,
        heads: Sequence[int] | None = None,
        forces: bool = True,
        max_atoms: int = 4096,
    ) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """Predict a whole :class:`~models.data.store.GraphStore` in contiguous atom-budget chunks.

        Yields:
            ``(start, stop, prediction)`` per chunk of graphs ``start:stop``.
        """
        for start, stop in atom_budget_chunks(store.natoms, max_atoms):
            yield start, stop, self.predict(store.get_chunk(start, stop), heads=heads, forces=forces)
