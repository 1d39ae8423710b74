"""SchNet (Schütt et al. 2017) built from PyG's blocks (``InteractionBlock`` / ``CFConv``, ``GaussianSmearing``).

PyG's ``CFConv`` multiplies each filter by the cosine cutoff ``0.5 (cos(pi r / rc) + 1)``, so energies are
smooth at the cutoff; edges beyond rc are removed by :class:`models.nn.model.MultiHeadModel` beforehand.

The parameters are PyG's modules (same names, same initialisation); the forward applies them with the same math
as ``InteractionBlock.forward`` but laid out for CPU speed: the filter network, the Gaussian expansion and the
envelope (everything that depends only on the distance) run once per atom pair when the second half of a full
neighbour list reverses the first (:func:`models.nn.geometry.reverse_edge_pairs`), the envelope is computed once
rather than per block, and the edge sum is ``index_select`` / ``index_add`` rather than ``propagate``'s
``scatter_add`` (whose backward is an element-wise ``gather``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Embedding
from torch_geometric.nn.models.schnet import GaussianSmearing, InteractionBlock

from models.nn.edge_ops import gather_rows, sum_rows
from models.nn.geometry import cosine_cutoff, reverse_edge_pairs


class SchNet(torch.nn.Module):
    """SchNet encoder returning invariant per-atom features.

    Args:
        hidden: Number of features F.
        layers: Number of interaction blocks.
        cutoff: Cutoff radius rc, Å.
        num_rbf: Number of Gaussians spread over [0, rc].
        max_z: Largest atomic number embedded.
        num_filters: Filter width of the continuous-filter convolution (default: ``hidden``).
    """

    def __init__(self, hidden: int = 128, layers: int = 4, cutoff: float = 5.0, num_rbf: int = 20,
                 max_z: int = 100, num_filters: int | None = None) -> None:
        super().__init__()
        self.hidden, self.cutoff = hidden, cutoff
        self.embedding = Embedding(max_z + 1, hidden)
        self.rbf = GaussianSmearing(0.0, cutoff, num_rbf)
        self.interactions = torch.nn.ModuleList(
            [InteractionBlock(hidden, num_rbf, num_filters or hidden, cutoff) for _ in range(layers)]
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reinitialise all weights."""
        self.embedding.reset_parameters()
        for block in self.interactions:
            block.reset_parameters()

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
        if pairs is not None:  # distance-only terms once per pair: edges [fwd; rev], |r_rev| = |r_fwd|
            edge_index = torch.cat([edge_index[:, pairs[0]], edge_index[:, pairs[1]]], dim=1)
            vec = vec.index_select(0, pairs[0])
        dist = torch.linalg.vector_norm(vec, dim=-1)
        attr = self.rbf(dist)
        envelope = cosine_cutoff(dist, self.cutoff).unsqueeze(-1)  # CFConv's C (dist < rc here)
        j, i = edge_index[0], edge_index[1]
        num, num_pairs = edge_index.size(1), dist.size(0)
        h = self.embedding(z)
        for block in self.interactions:
            conv = block.conv
            filt = block.mlp(attr) * envelope  # [P, filters]
            x = gather_rows(conv.lin1(h), j)  # [E, filters]
            msg = x * filt if num_pairs == num else (x.view(2, num_pairs, -1) * filt).view(num, -1)
            agg = sum_rows(msg, i, h.size(0))
            h = h + block.lin(block.act(conv.lin2(agg)))
        return h
