"""PaiNN: polarizable atom interaction neural network (Schütt, Unke, Gastegger, ICML 2021).

Scalar features ``s`` [N, F] and equivariant vector features ``v`` [N, 3, F] are updated by alternating message
and update blocks.

The math is the paper's (and schnetpack's); the implementation is laid out for CPU speed, where the per-edge
[E, F]-sized elementwise passes (and their first and second derivatives, for force training) dominate:

* Each message is one fused edge-product node (:func:`models.nn.edge_products.edge_sum`): the gathered
  features, the filters and the per-edge products live in scratch buffers, only the factors (atom features,
  the radial basis, the filter weights, unit vectors) and the [P, F] filters are saved, and every gradient it
  returns is atom-, basis- or weight-sized; its derivatives of every order are the same two nodes. The residual
  ``s + sum_j ...`` is the ``index_add`` itself and no [E, 4F] message is concatenated.
* The cutoff envelope is folded into the filter: ``fc (rbf W + b) = [fc rbf, fc] @ [W; b]``, so no [E, 3F]
  multiply is spent on it, and the radial basis is computed once per pair of an edge and its reverse.
* The first block starts from ``v = 0``: the ``v_j * dvv`` term and the gather of ``v`` are skipped there, and the
  last update's vector output, which the energy does not depend on, is not computed.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Embedding, Linear, Sequential, SiLU

from models.nn.edge_products import EdgeIndex, edge_sum
from models.nn.geometry import BesselBasis, GaussianBasis, cosine_cutoff, reverse_edge_pairs


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
        self, s: Tensor, v: Tensor | None, graph: EdgeIndex, unit: Tensor, basis: Tensor,
        weights: tuple[Tensor, Tensor, Tensor],
    ) -> tuple[Tensor, Tensor]:
        """Apply one message block (residual).

        Args:
            s: [N, F] scalar features.
            v: [3, N, F] vector features (coordinate-major), or ``None`` when they are all zero (first block).
            graph: Edge indices of the batch.
            unit: [3, E] unit edge vectors i -> j, coordinate-major.
            basis: [P, R] radial basis times the cutoff envelope (and the envelope itself, for the bias) of the
                first P edges (``P = E / 2`` when the second half of the edges reverses the first, same
                distances).
            weights: ``(A_s, A_v, A_r)``, each [R, F]: the continuous filters of this layer's three message parts
                are ``basis @ A``.

        Returns:
            Updated ``(s, v)``: [N, F] and [3, N, F].
        """
        xs, xv, xr = self.phi(s).split(self.hidden, dim=-1)
        ds = edge_sum(graph, s, [(None, xs.unsqueeze(0), basis, weights[0])])[0]  # [N, F]
        radial = (unit, xr.unsqueeze(0), basis, weights[2])  # dvs r_ij / |r_ij|
        if v is None:
            return s + ds.to(s.dtype), edge_sum(graph, s, [radial])
        # v_j * (x_v[j] W_v) = (v * x_v)[j] W_v: the product with x_v is done per atom, not per edge
        dv = edge_sum(graph, s, [(None, v * xv.unsqueeze(0), basis, weights[1]), radial])
        return s + ds.to(s.dtype), v + dv.to(v.dtype)


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
        num_rbf: Number of radial basis functions.
        max_z: Largest atomic number embedded.
        radial_basis: ``bessel`` (:class:`~models.nn.geometry.BesselBasis`, the paper's) or ``gaussian``
            (:class:`~models.nn.geometry.GaussianBasis`, schnetpack's choice).
    """

    def __init__(self, hidden: int = 128, layers: int = 4, cutoff: float = 5.0, num_rbf: int = 20,
                 max_z: int = 100, radial_basis: str = "bessel") -> None:
        super().__init__()
        self.hidden, self.layers, self.cutoff = hidden, layers, cutoff
        self.embedding = Embedding(max_z + 1, hidden)
        self.rbf: torch.nn.Module = (GaussianBasis(num_rbf, cutoff) if radial_basis == "gaussian"
                                     else BesselBasis(num_rbf, cutoff))
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
        # fc * (rbf @ W.T + b) = [fc * rbf, fc] @ [W.T; b]: the basis [P, R + 1] and each part's weight [R + 1, F]
        basis = torch.cat([self.rbf(dist) * fc, fc], dim=-1)
        weight = torch.cat([self.filter_net.weight.t(), self.filter_net.bias.unsqueeze(0)], dim=0)
        f = self.hidden
        s = self.embedding(z)
        graph = EdgeIndex(edge_index, s.size(0), dist.size(0))
        v: Tensor | None = None
        for k, (msg, upd) in enumerate(zip(self.messages, self.updates, strict=True)):
            parts = tuple(weight[:, (3 * k + p) * f:(3 * k + p + 1) * f] for p in range(3))
            s, v = msg(s, v, graph, unit, basis, parts)
            s, v = upd(s, v, vectors=k + 1 < self.layers)
        return s
