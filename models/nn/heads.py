"""Per-dataset energy heads: one per-atom MLP with a learnable per-element shift and scale per head id."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Embedding, Linear, Sequential, SiLU


class EnergyHead(torch.nn.Module):
    """Atomic energy of one head: ``e_i = scale[z_i] * mlp(h_i) + shift[z_i]`` (eV).

    Args:
        hidden: Width of the incoming atom features.
        max_z: Largest atomic number.
        head_hidden: Width of the hidden layer of the MLP (default ``hidden``).
    """

    def __init__(self, hidden: int, max_z: int, head_hidden: int | None = None) -> None:
        super().__init__()
        width = head_hidden or hidden
        self.mlp = Sequential(Linear(hidden, width), SiLU(), Linear(width, 1))
        self.scale = Embedding(max_z + 1, 1)
        self.shift = Embedding(max_z + 1, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MLP default init, scale 1 and shift 0 for every element."""
        self.mlp[0].reset_parameters()
        self.mlp[2].reset_parameters()
        torch.nn.init.ones_(self.scale.weight)
        torch.nn.init.zeros_(self.shift.weight)

    def forward(self, h: Tensor, z: Tensor) -> Tensor:
        """Args: h: [n, hidden] atom features; z: [n] atomic numbers. Returns [n] atomic energies, eV."""
        return self.mlp(h).squeeze(-1) * self.scale(z).squeeze(-1) + self.shift(z).squeeze(-1)


class MultiHead(torch.nn.Module):
    """Routes every atom to the head of its graph; a loop over the (few) heads, none over graphs.

    Args:
        head_ids: Registry head ids.
        hidden: Width of the atom features.
        max_z: Largest atomic number.
        head_hidden: Hidden width of each head's MLP.
    """

    def __init__(self, head_ids: list[int], hidden: int, max_z: int, head_hidden: int | None = None) -> None:
        super().__init__()
        self.hidden, self.max_z, self.head_hidden = hidden, max_z, head_hidden
        self.heads = torch.nn.ModuleDict({str(h): EnergyHead(hidden, max_z, head_hidden) for h in head_ids})

    @property
    def head_ids(self) -> list[int]:
        """Head ids in insertion order."""
        return [int(k) for k in self.heads]

    def add(self, head_id: int, init_from: int | None = None) -> EnergyHead:
        """Add a head (fine-tuning), freshly initialised or copied from head ``init_from``."""
        key = str(int(head_id))
        if key in self.heads:
            raise ValueError(f"head {head_id} already exists")
        ref = next(self.parameters())
        head = EnergyHead(self.hidden, self.max_z, self.head_hidden).to(device=ref.device, dtype=ref.dtype)
        if init_from is not None:
            head.load_state_dict(self.heads[str(int(init_from))].state_dict())
        self.heads[key] = head
        return head

    def forward(self, h: Tensor, z: Tensor, node_head: Tensor) -> Tensor:
        """Atomic energies.

        Args:
            h: [N, hidden] atom features.
            z: [N] atomic numbers.
            node_head: [N] head id of each atom's graph.

        Returns:
            [N] atomic energies, eV.

        Raises:
            ValueError: if an atom's head id has no head.
        """
        out = h.new_zeros(h.size(0))
        covered = 0
        for key, head in self.heads.items():
            idx = torch.nonzero(node_head == int(key)).squeeze(1)
            if idx.numel() == 0:
                continue
            covered += idx.numel()
            out = out.index_copy(0, idx, head(h.index_select(0, idx), z.index_select(0, idx)))
        if covered != h.size(0):
            known = set(self.head_ids)
            missing = sorted({int(x) for x in node_head.unique().tolist()} - known)
            raise ValueError(f"batch has head ids {missing} without a head (model heads: {sorted(known)})")
        return out
