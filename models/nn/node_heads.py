"""Direct node heads: per-atom properties predicted from the encoder's features, one set per registry head id.

Two kinds, both built on the encoder's invariant atom features ``h`` [N, F] (every family returns those):

* ``scalar`` — an invariant per-atom value (partial charges, magnetic moments, atomic energies):
  ``y_i = MLP(h_i)``;
* ``vector`` — an equivariant per-atom vector (direct, non-conservative forces, dipoles):
  ``y_i = sum over edges j -> i of w(h_i, h_j, |r_ij|) fc(|r_ij|) r_ij / |r_ij|`` with an invariant edge weight
  ``w``. It rotates with the structure, is unchanged by translations and permutations, and goes smoothly to zero
  as a neighbour leaves the cutoff.

A head named ``forces`` of kind ``vector`` is what ``forces: direct`` models predict forces with (no derivative of
the energy: cheaper, not conservative; HydraGNN's node-level force heads). Heads are kept per registry head id
(``node_heads[str(head_id)][name]``), as the energy heads are, so that head-grouped parallelism synchronises each
with its dataset's ranks.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Linear, Sequential, SiLU

from models.nn.edge_ops import sum_rows
from models.nn.geometry import BesselBasis, cosine_cutoff

NODE_KINDS: tuple[str, ...] = ("scalar", "vector")


class ScalarNodeHead(torch.nn.Module):
    """``y_i = MLP(h_i)``.

    Args:
        hidden: Width F of the atom features.
        width: Hidden width of the MLP (default F).
    """

    def __init__(self, hidden: int, width: int | None = None) -> None:
        super().__init__()
        width = width or hidden
        self.mlp = Sequential(Linear(hidden, width), SiLU(), Linear(width, 1))

    def forward(self, h: Tensor, vec: Tensor, edge_index: Tensor) -> Tensor:
        """Args: h: [N, F]; vec, edge_index: unused. Returns [N]."""
        return self.mlp(h).squeeze(-1)


class VectorNodeHead(torch.nn.Module):
    """``y_i = sum_j w(h_i, h_j, |r_ij|) fc(|r_ij|) r_ij / |r_ij|``.

    Args:
        hidden: Width F of the atom features.
        cutoff: Cutoff radius, Å (cosine envelope of the edge weight).
        num_rbf: Radial basis functions of the edge weight.
        width: Hidden width of the edge MLP (default F).
    """

    def __init__(self, hidden: int, cutoff: float, num_rbf: int = 16, width: int | None = None) -> None:
        super().__init__()
        width = width or hidden
        self.cutoff = cutoff
        self.rbf = BesselBasis(num_rbf, cutoff)
        self.mlp = Sequential(Linear(2 * hidden + num_rbf, width), SiLU(), Linear(width, 1))

    def forward(self, h: Tensor, vec: Tensor, edge_index: Tensor) -> Tensor:
        """Per-atom vectors.

        Args:
            h: [N, F] invariant atom features.
            vec: [E, 3] edge vectors i -> j, Å.
            edge_index: [2, E] (neighbour j, centre i).

        Returns:
            [N, 3].
        """
        j, i = edge_index[0], edge_index[1]
        dist = torch.linalg.vector_norm(vec, dim=-1)
        feats = torch.cat([h.index_select(0, i), h.index_select(0, j), self.rbf(dist).to(h.dtype)], dim=-1)
        w = self.mlp(feats).squeeze(-1) * cosine_cutoff(dist, self.cutoff).to(h.dtype)  # [E]
        unit = vec / dist.clamp(min=1e-9).unsqueeze(-1)
        return sum_rows(w.unsqueeze(-1).to(vec.dtype) * unit, i, h.size(0))


def make_node_head(kind: str, hidden: int, cutoff: float) -> torch.nn.Module:
    """A fresh head of ``kind`` (see :data:`NODE_KINDS`)."""
    if kind == "scalar":
        return ScalarNodeHead(hidden)
    if kind == "vector":
        return VectorNodeHead(hidden, cutoff)
    raise ValueError(f"node head kind {kind!r} unknown; choose one of {NODE_KINDS}")


class NodeHeads(torch.nn.Module):
    """Every direct node head of every registry head id; routes each atom to its graph's head id.

    Args:
        specs: ``[{"name": ..., "kind": "scalar" | "vector"}, ...]``.
        head_ids: Registry head ids.
        hidden: Width of the atom features.
        cutoff: Cutoff radius, Å.
    """

    def __init__(self, specs: list[dict[str, str]], head_ids: list[int], hidden: int, cutoff: float) -> None:
        super().__init__()
        self.specs = [dict(s) for s in specs]
        self.hidden, self.cutoff = hidden, cutoff
        self.heads = torch.nn.ModuleDict({str(h): self._fresh() for h in head_ids})

    def _fresh(self) -> torch.nn.ModuleDict:
        return torch.nn.ModuleDict({s["name"]: make_node_head(s["kind"], self.hidden, self.cutoff)
                                    for s in self.specs})

    def add(self, head_id: int, init_from: int | None = None) -> None:
        """Node heads for a new registry head id (fine-tuning), fresh or copied from ``init_from``'s."""
        ref = next(self.parameters(), None)
        new = self._fresh()
        if ref is not None:
            new = new.to(device=ref.device, dtype=ref.dtype)
        if init_from is not None:
            new.load_state_dict(self.heads[str(int(init_from))].state_dict())
        self.heads[str(int(head_id))] = new

    def forward(self, h: Tensor, vec: Tensor, edge_index: Tensor, node_head: Tensor) -> dict[str, Tensor]:
        """Every node head's output, each atom through the heads of its graph's head id.

        Args:
            h: [N, F] atom features.
            vec: [E, 3] edge vectors i -> j, Å.
            edge_index: [2, E] (neighbour j, centre i).
            node_head: [N] head id of each atom's graph.

        Returns:
            ``{name: [N] (scalar) or [N, 3] (vector)}``.
        """
        n = h.size(0)
        out: dict[str, Tensor] = {
            s["name"]: vec.new_zeros(n, 3) if s["kind"] == "vector" else h.new_zeros(n) for s in self.specs
        }
        for key, heads in self.heads.items():
            atoms = node_head == int(key)
            if not bool(atoms.any()):
                continue
            idx = torch.nonzero(atoms).squeeze(1)
            edges = torch.nonzero(atoms[edge_index[1]]).squeeze(1)  # an edge belongs to its centre atom's graph
            for s in self.specs:
                name = s["name"]
                if s["kind"] == "scalar":
                    y = heads[name](h.index_select(0, idx), vec, edge_index)
                else:  # all atoms' features, this head's edges: sums land on this head's atoms only
                    y = heads[name](h, vec.index_select(0, edges), edge_index.index_select(1, edges)).index_select(0, idx)
                out[name] = out[name].index_copy(0, idx, y.to(out[name].dtype))
        return out
