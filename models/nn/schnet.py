"""SchNet (Schütt et al. 2017) built from PyG's blocks (``InteractionBlock`` / ``CFConv``, ``GaussianSmearing``).

PyG's ``CFConv`` multiplies each filter by the cosine cutoff ``0.5 (cos(pi r / rc) + 1)``, so energies are
smooth at the cutoff; edges beyond rc are removed by :class:`models.nn.model.MultiHeadModel` beforehand.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Embedding
from torch_geometric.nn.models.schnet import GaussianSmearing, InteractionBlock


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
        dist = torch.linalg.vector_norm(vec, dim=-1)
        attr = self.rbf(dist)
        h = self.embedding(z)
        for block in self.interactions:
            h = h + block(h, edge_index, dist, attr)
        return h
