"""PNA: principal neighbourhood aggregation (Corso et al. 2020) on PyG's ``PNAConv``, as in HydraGNN.

Edge features are a Bessel basis of the distance; every message is multiplied by the cosine envelope. PNA's
count-based aggregators (mean, std, min, max) and degree scalers change when a neighbour crosses the cutoff,
so with the default aggregators the energy is continuous only up to that jump; ``aggregators=["sum"]`` and
``scalers=["identity"]`` give a variant that is smooth at the cutoff.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Embedding
from torch_geometric.nn import PNAConv

from models.contracts.hyperparams import DEFAULT_AGGREGATORS, DEFAULT_SCALERS
from models.nn.geometry import BesselBasis, cosine_cutoff


class EnvelopePNAConv(PNAConv):
    """``PNAConv`` whose messages are multiplied by a per-edge envelope weight [E]."""

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None,  # type: ignore[override]
                weight: Tensor | None = None) -> Tensor:
        """Args: x: [N, F_in]; edge_index: [2, E]; edge_attr: [E, edge_dim]; weight: [E]. Returns [N, F_out]."""
        if self.divide_input:
            x = x.view(-1, self.towers, self.F_in)
        else:
            x = x.view(-1, 1, self.F_in).repeat(1, self.towers, 1)
        # propagate_type: (x: Tensor, edge_attr: OptTensor, weight: OptTensor)
        out = self.propagate(edge_index, x=x, edge_attr=edge_attr, weight=weight)
        out = torch.cat([x, out], dim=-1)
        out = torch.cat([nn(out[:, i]) for i, nn in enumerate(self.post_nns)], dim=1)
        return self.lin(out)

    def message(self, x_i: Tensor, x_j: Tensor, edge_attr: Tensor | None,  # type: ignore[override]
                weight: Tensor | None) -> Tensor:
        """Per-edge message [E, towers, F_in] times the envelope."""
        out = super().message(x_i, x_j, edge_attr)
        return out if weight is None else out * weight.view(-1, 1, 1)


def degree_histogram(edge_index: Tensor, num_nodes: int) -> list[int]:
    """In-degree histogram of one graph or batch, to pass as the ``pna_deg`` config key.

    Args:
        edge_index: [2, E] (neighbour j, centre i).
        num_nodes: N.

    Returns:
        ``hist[d]`` = number of atoms with d neighbours.
    """
    deg = torch.bincount(edge_index[1], minlength=num_nodes)
    return torch.bincount(deg).tolist()


class PNA(torch.nn.Module):
    """PNA encoder returning invariant per-atom features.

    Args:
        hidden: Number of features F.
        layers: Number of PNA convolutions.
        cutoff: Cutoff radius rc, Å.
        num_rbf: Bessel basis size (edge features).
        max_z: Largest atomic number embedded.
        deg: In-degree histogram of the training data (``hist[d]`` atoms with d neighbours); see
            :func:`degree_histogram`. Default: every atom with 32 neighbours.
        aggregators: PNA aggregators.
        scalers: PNA degree scalers.
        towers: PNA towers (must divide ``hidden``).
    """

    def __init__(self, hidden: int = 128, layers: int = 4, cutoff: float = 5.0, num_rbf: int = 20,
                 max_z: int = 100, deg: list[int] | None = None,
                 aggregators: tuple[str, ...] | list[str] = DEFAULT_AGGREGATORS,
                 scalers: tuple[str, ...] | list[str] = DEFAULT_SCALERS, towers: int = 1) -> None:
        super().__init__()
        self.hidden, self.cutoff = hidden, cutoff
        if deg is None:
            deg = [0] * 32 + [1]
        deg_t = torch.tensor(deg, dtype=torch.long)
        self.embedding = Embedding(max_z + 1, hidden)
        self.rbf = BesselBasis(num_rbf, cutoff)
        self.convs = torch.nn.ModuleList([
            EnvelopePNAConv(hidden, hidden, list(aggregators), list(scalers), deg_t, edge_dim=num_rbf,
                            towers=towers, divide_input=False, act="silu")
            for _ in range(layers)
        ])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reinitialise all weights."""
        self.embedding.reset_parameters()
        for conv in self.convs:
            conv.reset_parameters()

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
        fcut = cosine_cutoff(dist, self.cutoff)
        attr = self.rbf(dist) * fcut.unsqueeze(-1)
        h = self.embedding(z)
        for conv in self.convs:
            h = h + torch.nn.functional.silu(conv(h, edge_index, attr, fcut))
        return h
