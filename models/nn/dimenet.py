"""DimeNet++ (Gasteiger et al. 2020) from PyG's blocks, with triplets computed without ``torch_sparse``.

PyG's ``DimeNet.triplets`` builds a ``torch_sparse.SparseTensor`` (not installable here) and ignores periodic
images; :func:`triplets` sorts the edges by centre atom and expands them with ``repeat_interleave`` instead, and
drops only the true back-tracking triplet (k = i *and* the same periodic image). The angular basis is
:class:`models.nn.dimenet_basis.SphericalBasis` (the same functions as PyG's ``SphericalBasisLayer``, without its
SymPy derivation at every model build).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Embedding
from torch_geometric.nn.models.dimenet import (
    BesselBasisLayer,
    EmbeddingBlock,
    InteractionPPBlock,
    OutputPPBlock,
)
from torch_geometric.nn.resolver import activation_resolver

from models.nn.dimenet_basis import SphericalBasis


def triplets(edge_index: Tensor, shift: Tensor | None, num_nodes: int) -> tuple[Tensor, Tensor]:
    """All edge pairs (k -> j, j -> i) sharing atom j, without the back-tracking pair.

    Args:
        edge_index: [2, E] (neighbour j, centre i).
        shift: [E, 3] integer cell shifts, or ``None`` for molecules.
        num_nodes: N.

    Returns:
        ``(idx_kj, idx_ji)``: [T] edge indices of the incoming edge k -> j and the outgoing edge j -> i.
    """
    j, i = edge_index[0], edge_index[1]
    num_edges = j.numel()
    order = torch.argsort(i, stable=True)
    count = torch.bincount(i, minlength=num_nodes)
    start = torch.cumsum(count, 0) - count
    n_trip = count[j]
    idx_ji = torch.repeat_interleave(torch.arange(num_edges, device=j.device), n_trip)
    first = torch.cumsum(n_trip, 0) - n_trip
    local = torch.arange(idx_ji.numel(), device=j.device) - first[idx_ji]
    idx_kj = order[start[j[idx_ji]] + local]
    back = j[idx_kj] == i[idx_ji]
    if shift is not None:
        back = back & ((shift[idx_kj] + shift[idx_ji]) == 0).all(dim=-1)
    keep = ~back
    return idx_kj[keep], idx_ji[keep]


class DimeNetPlusPlus(torch.nn.Module):
    """DimeNet++ encoder returning invariant per-atom features (the sum of the output blocks).

    Args:
        hidden: Hidden embedding size F (also the per-atom output width).
        layers: Number of interaction blocks.
        cutoff: Cutoff radius rc, Å (polynomial envelope).
        num_radial: Number of radial Bessel functions.
        max_z: Largest atomic number embedded.
        num_spherical: Number of spherical harmonics of the angular basis.
        int_emb_size: Interaction embedding size.
        basis_emb_size: Basis embedding size.
        out_emb_channels: Width of the output blocks.
        envelope_exponent: Shape of the smooth cutoff.
        num_before_skip: Residual layers before the skip connection.
        num_after_skip: Residual layers after the skip connection.
        num_output_layers: Linear layers of each output block.
    """

    def __init__(self, hidden: int = 128, layers: int = 4, cutoff: float = 5.0, num_radial: int = 6,
                 max_z: int = 100, num_spherical: int = 7, int_emb_size: int = 64, basis_emb_size: int = 8,
                 out_emb_channels: int = 256, envelope_exponent: int = 5, num_before_skip: int = 1,
                 num_after_skip: int = 2, num_output_layers: int = 3) -> None:
        super().__init__()
        act = activation_resolver("swish")
        self.hidden, self.cutoff = hidden, cutoff
        self.rbf = BesselBasisLayer(num_radial, cutoff, envelope_exponent)
        self.sbf = SphericalBasis(num_spherical, num_radial, cutoff, envelope_exponent)
        self.emb = EmbeddingBlock(num_radial, hidden, act)
        self.emb.emb = Embedding(max_z + 1, hidden)
        self.output_blocks = torch.nn.ModuleList([
            OutputPPBlock(num_radial, hidden, out_emb_channels, hidden, num_output_layers, act,
                          output_initializer="glorot_orthogonal")
            for _ in range(layers + 1)
        ])
        self.interaction_blocks = torch.nn.ModuleList([
            InteractionPPBlock(hidden, int_emb_size, basis_emb_size, num_spherical, num_radial,
                               num_before_skip, num_after_skip, act)
            for _ in range(layers)
        ])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reinitialise all weights."""
        self.rbf.reset_parameters()
        self.emb.reset_parameters()
        for block in (*self.output_blocks, *self.interaction_blocks):
            block.reset_parameters()

    def forward(self, z: Tensor, vec: Tensor, edge_index: Tensor, shift: Tensor | None = None) -> Tensor:
        """Encode atoms.

        Args:
            z: [N] atomic numbers.
            vec: [E, 3] edge vectors i -> j, Å (within the cutoff).
            edge_index: [2, E] (neighbour j, centre i).
            shift: [E, 3] cell shifts (to tell periodic images apart in the triplets), or ``None``.

        Returns:
            [N, F] invariant atom features.
        """
        n = z.size(0)
        j, i = edge_index[0], edge_index[1]
        idx_kj, idx_ji = triplets(edge_index, shift, n)
        dist = torch.linalg.vector_norm(vec, dim=-1)
        v_ji, v_kj = vec[idx_ji], vec[idx_kj]
        a = (v_ji * v_kj).sum(dim=-1)
        b = torch.linalg.vector_norm(torch.cross(v_ji, v_kj, dim=-1), dim=-1)
        angle = torch.atan2(b, a)
        rbf = self.rbf(dist)
        sbf = self.sbf(dist, angle, idx_kj)
        x = self.emb(z, rbf, i, j)
        out = self.output_blocks[0](x, rbf, i, num_nodes=n)
        for interaction, output in zip(self.interaction_blocks, self.output_blocks[1:], strict=True):
            x = interaction(x, rbf, sbf, idx_kj, idx_ji)
            out = out + output(x, rbf, i, num_nodes=n)
        return out
