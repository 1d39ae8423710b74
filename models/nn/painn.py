"""PaiNN: polarizable atom interaction neural network (Schütt, Unke, Gastegger, ICML 2021).

Scalar features ``s`` [N, F] and equivariant vector features ``v`` [N, 3, F] are updated by alternating message
and update blocks.

The math is the paper's (and schnetpack's); the implementation is laid out for CPU speed, where the per-edge
[E, F]-sized elementwise passes (and their first and second derivatives, for force training) dominate:

* Gathers and sums over edges are ``index_select`` / ``index_add`` (their backward is each other, contiguous
  row copies), rather than PyG's ``propagate`` whose ``scatter_add`` backward is an element-wise ``gather``;
  the residual ``s + sum_j ...`` is the ``index_add`` itself and no [E, 4F] message is concatenated.
* The cutoff envelope is folded into the filter matmul: ``fc (rbf W + b) = [fc rbf, fc] @ [W; b]``, so no
  [E, 3F] multiply is spent on it, and each layer's filter is its own [E, 21] x [21, 3F] matmul (no split views
  of an [E, 12F] tensor whose gradient would have to be reassembled).
* The first block starts from ``v = 0``: the ``v_j * dvv`` term and the gather of ``v`` are skipped there, and the
  last update's vector output, which the energy does not depend on, is not computed.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Embedding, Linear, Sequential, SiLU

from models.nn.edge_ops import gather_rows
from models.nn.edge_products import EdgeIndex, edge_sum
from models.nn.geometry import BesselBasis, cosine_cutoff, reverse_edge_pairs


class PaiNNMessage(torch.nn.Module):
    """PaiNN message block: ``ds_i = sum_j phi(s_j) W(r_ij)``, ``dv_i = sum_j v_j dvv + dvs r_ij/|r_ij|``.

    Args:
        hidden: Number of features F.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.phi = Sequential(Linear(hidden, hidden), SiLU(), Linear(hidden, 3 * hidden))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reinitialise the weights."""
        for lin in (self.phi[0], self.phi[2]):
            lin.reset_parameters()

    def forward(
        self, s: Tensor, v: Tensor | None, graph: EdgeIndex, unit: Tensor, filt: tuple[Tensor, Tensor, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Apply one message block (residual).

        Args:
            s: [N, F] scalar features.
            v: [3, N, F] vector features (coordinate-major), or ``None`` when they are all zero (first block).
            graph: Edge indices of the batch.
            unit: [3, E] unit edge vectors i -> j, coordinate-major.
            filt: ``(W_s, W_v, W_r)``, each [P, F]: the continuous filter of this layer's three message parts,
                already multiplied by the cutoff envelope, of the first P edges (``P = E / 2`` when the second
                half of the edges reverses the first, same distances).

        Returns:
            Updated ``(s, v)``: [N, F] and [3, N, F].
        """
        f = self.hidden
        xs, xv, xr = self.phi(s).split(f, dim=-1)
        ds = edge_sum(graph, s, [(xs.unsqueeze(0), filt[0])])[0].to(s.dtype)  # [N, F]
        xr_j = gather_rows(xr, graph.j)
        mr = xr_j * filt[2] if graph.pairs == graph.num else (xr_j.view(2, graph.pairs, f) * filt[2]).view_as(xr_j)
        if v is None:
            return s + ds, edge_sum(graph, s, [], [(unit, mr)])
        # v_j * (x_v[j] W_v) = (v * x_v)[j] W_v: the product with x_v is done per atom, not per edge
        return s + ds, v + edge_sum(graph, s, [(v * xv.unsqueeze(0), filt[1])], [(unit, mr)]).to(v.dtype)


class PaiNNUpdate(torch.nn.Module):
    """PaiNN update block mixing scalar and vector channels per atom.

    Args:
        hidden: Number of features F.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.lin_uv = Linear(hidden, 2 * hidden, bias=False)
        self.mlp = Sequential(Linear(2 * hidden, hidden), SiLU(), Linear(hidden, 3 * hidden))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reinitialise the weights."""
        self.lin_uv.reset_parameters()
        for lin in (self.mlp[0], self.mlp[2]):
            lin.reset_parameters()

    def forward(self, s: Tensor, v: Tensor, vectors: bool = True) -> tuple[Tensor, Tensor | None]:
        """Args: s: [N, F]; v: [3, N, F]; vectors: also return the updated ``v`` (else ``None``).

        Returns the updated ``(s, v)`` (residual).
        """
        f = self.hidden
        uv, vv = self.lin_uv(v).split(f, dim=-1)
        vnorm = torch.sqrt((vv * vv).sum(dim=0) + 1e-8)
        a_vv, a_sv, a_ss = self.mlp(torch.cat([s, vnorm], dim=-1)).split(f, dim=-1)
        s = s + torch.addcmul(a_ss, a_sv, (uv * vv).sum(dim=0))
        return s, torch.addcmul(v, a_vv.unsqueeze(0), uv) if vectors else None


class PaiNN(torch.nn.Module):
    """PaiNN encoder returning invariant per-atom features.

    Args:
        hidden: Number of features F (default 128).
        layers: Number of message + update blocks (default 4).
        cutoff: Cutoff radius rc, Å (cosine envelope).
        num_rbf: Number of Bessel radial basis functions.
        max_z: Largest atomic number embedded.
    """

    def __init__(self, hidden: int = 128, layers: int = 4, cutoff: float = 5.0, num_rbf: int = 20,
                 max_z: int = 100) -> None:
        super().__init__()
        self.hidden, self.layers, self.cutoff = hidden, layers, cutoff
        self.embedding = Embedding(max_z + 1, hidden)
        self.rbf = BesselBasis(num_rbf, cutoff)
        self.filter_net = Linear(num_rbf, layers * 3 * hidden)
        self.messages = torch.nn.ModuleList([PaiNNMessage(hidden) for _ in range(layers)])
        self.updates = torch.nn.ModuleList([PaiNNUpdate(hidden) for _ in range(layers)])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reinitialise all weights."""
        self.embedding.reset_parameters()
        self.filter_net.reset_parameters()
        for m, u in zip(self.messages, self.updates, strict=True):
            m.reset_parameters()
            u.reset_parameters()

    def forward(self, z: Tensor, vec: Tensor, edge_index: Tensor) -> Tensor:
        """Encode atoms.

        Args:
            z: [N] atomic numbers.
            vec: [E, 3] edge vectors i -> j, Å (within the cutoff).
            edge_index: [2, E] (neighbour j, centre i).

        Returns:
            [N, F] invariant atom features.
        """
        pairs = reverse_edge_pairs(edge_index, vec)
        if pairs is not None:  # geometry and filters once per pair: [fwd; rev] edges, r_rev = -r_fwd
            edge_index = torch.cat([edge_index[:, pairs[0]], edge_index[:, pairs[1]]], dim=1)
            vec = vec.index_select(0, pairs[0])
        dist = torch.linalg.vector_norm(vec, dim=-1)
        unit = (vec / dist.unsqueeze(-1)).t().contiguous()  # [3, P]
        if pairs is not None:
            unit = torch.cat([unit, -unit], dim=1)
        fc = cosine_cutoff(dist, self.cutoff).unsqueeze(-1)
        # fc * (rbf @ W.T + b) as one matmul per layer and part: [fc * rbf, fc] @ [W.T; b]  ->  [P, F]
        basis = torch.cat([self.rbf(dist) * fc, fc], dim=-1)
        weight = torch.cat([self.filter_net.weight.t(), self.filter_net.bias.unsqueeze(0)], dim=0)
        f = self.hidden
        s = self.embedding(z)
        graph = EdgeIndex(edge_index, s.size(0), dist.size(0))
        v: Tensor | None = None
        for k, (msg, upd) in enumerate(zip(self.messages, self.updates, strict=True)):
            filt = tuple(basis @ weight[:, (3 * k + p) * f:(3 * k + p + 1) * f] for p in range(3))
            s, v = msg(s, v, graph, unit, filt)
            s, v = upd(s, v, vectors=k + 1 < self.layers)
        return s
