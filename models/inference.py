"""Inference for screening: every head's energy (and forces) of a batch from ONE encoder pass.

:class:`Predictor` runs the shared encoder once per batch, then all selected heads in one batched pass (the
heads' MLP weights are stacked into ``[H, ...]`` tensors and applied with ``einsum``), giving energies
``[G, H]``.

Forces. Screening ranks by one head (the criterion's), so by default (``force_heads=[h]``) forces come from ONE
backward pass of that head's energy through the graph of the single forward pass: the same cost as the plain
model, however many heads are evaluated. Per-head forces of several heads (``F_h = -dE_h/dpos``) cannot come
from one backward of ``sum_h E_h`` (that gives only ``-d(sum_h E_h)/dpos``), so they are taken either as one
vmapped backward with ``H`` one-hot cotangents (``force_method="vmap"``, ``is_grads_batched=True``: one autograd
call, batched over heads, the better choice on GPUs) or one backward per head on the retained graph
(``force_method="loop"``, the CPU default: PaiNN, 128 features, 4 heads measured 0.73 s vs 1.09 s per 16
structures on 1 thread). Either way the encoder's forward runs once per batch.

Energies include each head's element reference energies (``sum_i ref_h[z_i]``) when the checkpoint carries
them (``head_references``, written by :mod:`models.train`); otherwise the batch's ``eref`` is added to every
head.

Large sets are processed in contiguous chunks whose atom count stays under an atom budget
(:func:`atom_budget_chunks`, :meth:`Predictor.predict_store`); :func:`memory_atom_budget` sizes that budget
to the memory of the device. :class:`EnsemblePredictor` evaluates several models on the same batch and gives
the ensemble mean and spread (standard deviation over members) as the uncertainty.
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


def activation_bytes_per_atom(config: dict[str, Any], precision: str, max_neighbours: int = 32) -> int:
    """Rough peak bytes per atom of a forward + backward pass (activations kept for autograd).

    Message passing keeps about ``12 x hidden`` numbers per edge and layer (filters, messages, vector
    features), plus ``16 x hidden`` per atom and layer; doubled for the backward pass.

    Args:
        config: Model config (``hidden``, ``layers``).
        precision: ``fp64`` | ``fp32`` | ``bf16``.
        max_neighbours: Edges per atom.
    """
    width = 8 if precision == "fp64" else 4
    hidden, layers = int(config.get("hidden", 128)), int(config.get("layers", 4))
    per_layer = (12 * max_neighbours + 16) * hidden
    if config.get("family") == "dimenet++":
        # angle triplets: about k (k - 1) per atom, each carrying the spherical basis (num_spherical x
        # num_radial), its embedding and the interaction channels, several intermediates of each kept for autograd
        sbf = int(config.get("num_spherical", 7)) * int(config.get("num_radial", 6))
        per_triplet = 4 * (sbf + int(config.get("basis_emb_size", 8)) + int(config.get("int_emb_size", 64)))
        per_layer += max_neighbours * max(max_neighbours - 1, 1) * per_triplet
    elif config.get("family") == "mace":
        # equivariant edge features up to max_ell: (max_ell + 1)^2 components per channel
        per_layer += 12 * max_neighbours * hidden * (int(config.get("max_ell", 2)) + 1) ** 2
    return int(2 * per_layer * layers * width)


def available_memory(device: torch.device) -> int:
    """Free bytes on ``device``: ``cuda.mem_get_info`` on GPUs, available physical pages on the host."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX hosts
        return 4 << 30


def memory_atom_budget(
    config: dict[str, Any],
    precision: str,
    device: str | torch.device = "cpu",
    *,
    fraction: float = 0.25,
    max_neighbours: int = 32,
    cap: int = 65536,
    floor: int = 512,
) -> int:
    """Atoms per batch that fit in ``fraction`` of the device's free memory (between ``floor`` and ``cap``)."""
    per_atom = activation_bytes_per_atom(config, precision, max_neighbours)
    budget = int(available_memory(torch.device(device)) * fraction // max(per_atom, 1))
    return max(floor, min(cap, budget))


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
        self,
        batch: Batch,
        heads: Sequence[int] | None = None,
        forces: bool = True,
        force_heads: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """Predict a batch for several heads.

        Args:
            batch: Graphs with ``z``, ``pos``, ``cell``, ``edge_index``, ``shift``, ``batch`` (``eref`` used only
                without stored head references).
            heads: Head ids to evaluate (default: all of the model's).
            forces: Also return forces.
            force_heads: Heads (a subset of ``heads``) whose forces are wanted (default: every evaluated head).
                One head costs one backward pass.

        Returns:
            ``{"heads": [H] ids, "energy": [G, H] eV, "force_heads": [Hf] ids, "forces": [N, Hf, 3] eV/Å or
            None}`` (detached).
        """
        wanted = self.head_ids if heads is None else [int(h) for h in heads]
        unknown = sorted(set(wanted) - set(self.head_ids))
        if unknown:
            raise ValueError(f"heads {unknown} are not in the model (it has {self.head_ids})")
        fheads = wanted if force_heads is None else [int(h) for h in force_heads]
        if forces and not set(fheads) <= set(wanted):
            raise ValueError(f"force_heads {sorted(set(fheads) - set(wanted))} are not among the heads {wanted}")
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
        direct = bool(getattr(self.model, "direct_forces", False))  # forces from a node head, not -dE/dpos
        autograd_forces = forces and not direct
        with torch.enable_grad() if autograd_forces else torch.no_grad():
            if autograd_forces:
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
                out: dict[str, Any] = {"heads": wanted, "energy": energy.detach(), "forces": None,
                                       "force_heads": fheads if forces else []}
                if forces and direct:
                    out["forces"] = self._direct_forces(h.to(pos.dtype), vec, edge_index, fheads)
                elif forces:
                    fcols = [wanted.index(h) for h in fheads]
                    out["forces"] = self._per_head_forces(energy[:, fcols], pos)
        return out

    def _direct_forces(self, h: Tensor, vec: Tensor, edge_index: Tensor, fheads: Sequence[int]) -> Tensor:
        """[N, Hf, 3]: each head's direct force head on every atom (a ``forces: direct`` model)."""
        heads = self.model.node_heads.heads
        return torch.stack([heads[str(hid)]["forces"](h, vec, edge_index) for hid in fheads], dim=1).detach()

    def _per_head_forces(self, energy: Tensor, pos: Tensor) -> Tensor:
        """[N, H, 3] = -dE_h/dpos for every head column of ``energy`` [G, H]."""
        total = energy.sum(dim=0)  # [H]; graphs are independent, so d(sum_g E_gh)/dpos_i = dE_{g(i)h}/dpos_i
        k = total.numel()
        g: Tensor | None = None
        if self.force_method == "vmap" and k > 1:
            eye = torch.eye(k, dtype=total.dtype, device=total.device)
            try:
                # retain_graph: a batched backward that fails part-way (an operator or autograd.Function
                # without a batching rule) has freed what it passed; the loop below needs the whole graph
                (g,) = torch.autograd.grad(
                    total, pos, grad_outputs=eye, is_grads_batched=True, retain_graph=True
                )  # [H, N, 3]
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
        force_heads: Sequence[int] | None = None,
        max_atoms: int = 4096,
    ) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """Predict a whole :class:`~models.data.store.GraphStore` in contiguous atom-budget chunks.

        Yields:
            ``(start, stop, prediction)`` per chunk of graphs ``start:stop``.
        """
        for start, stop in atom_budget_chunks(store.natoms, max_atoms):
            yield start, stop, self.predict(store.get_chunk(start, stop), heads=heads, forces=forces,
                                            force_heads=force_heads)


class EnsemblePredictor:
    """Several :class:`Predictor` s on the same batch: the ensemble mean and spread of each head's energy.

    Args:
        members: One predictor per model; every member must have the evaluated heads.
    """

    def __init__(self, members: Sequence[Predictor]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        self.cutoff = max(float(p.model.cutoff) for p in self.members)
        common = set(self.members[0].head_ids)
        for p in self.members[1:]:
            common &= set(p.head_ids)
        self.head_ids = [h for h in self.members[0].head_ids if h in common]

    def predict(
        self, batch: Batch, heads: Sequence[int], forces: bool = True, force_heads: Sequence[int] | None = None
    ) -> dict[str, Any]:
        """Every member on ``batch`` (each with its own single encoder pass).

        Returns:
            ``{"heads": [H], "energy": [G, H] ensemble mean, eV, "energy_std": [G, H] standard deviation over
            members (population, 0 for one member), "members": [M, G, H], "force_heads": [Hf],
            "forces": [N, Hf, 3] member mean or None}``.
        """
        outs = [p.predict(batch.clone(), heads=heads, forces=forces, force_heads=force_heads)
                for p in self.members]
        stack = torch.stack([o["energy"].to(torch.float64) for o in outs])  # [M, G, H]
        f = f_std = None
        if forces:
            fm = torch.stack([o["forces"].to(torch.float64) for o in outs])  # [M, N, Hf, 3]
            f = fm.mean(dim=0)
            f_std = fm.std(dim=0, correction=0).norm(dim=-1)
        return {"heads": list(heads), "energy": stack.mean(dim=0), "energy_std": stack.std(dim=0, correction=0),
                "members": stack, "force_heads": outs[0]["force_heads"], "forces": f, "force_std": f_std}
