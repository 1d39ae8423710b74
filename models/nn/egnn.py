"""EGNN: E(n)-equivariant graph neural network (Satorras, Hoogeboom, Welling, ICML 2021).

Each layer updates invariant features ``h`` and an equivariant per-atom displacement ``d`` [N, 3]. For periodic
images the coordinates are never wrapped: the edge vector of layer l is ``r_ij + d_j - d_i``, which equals the
original EGNN coordinate update for molecules and stays correct across cell boundaries. Messages are multiplied
by the cosine envelope of the *input* distance so the energy is smooth at the cutoff.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Embedding, Linear, Sequential, SiLU
from torch_geometric.nn import MessagePassing

from models.nn.geometry import BesselBasis, cosine_cutoff


class EGNNLayer(MessagePassing):
    """One EGNN layer: ``m_ij = phi_e(h_i, h_j, rbf(|r_ij|)) fc(r_ij)``; ``dx_i = sum_j -r_ij tanh(phi_x(m_ij))``.

    Args:
        hidden: Number of features F.
        num_rbf: Radial basis size.
        norm: Divides the summed messages (the average number of neighbours).
    """

    def __init__(self, hidden: int, num_rbf: int, norm: float) -> None:
        super().__init__(aggr="add", node_dim=0)
        self.hidden, self.norm = hidden, norm
        self.phi_e = Sequential(Linear(2 * hidden + num_rbf, hidden), SiLU(), Linear(hidden, hidden), SiLU())
        self.phi_x = Sequential(Linear(hidden, hidden), SiLU(), Linear(hidden, 1))
        self.phi_h = Sequential(Linear(2 * hidden, hidden), SiLU(), Linear(hidden, hidden))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reinitialise the weights."""
        for seq in (self.phi_e, self.phi_x, self.phi_h):
            for mod in seq:
                if isinstance(mod, Linear):
                    mod.reset_parameters()

    def forward(self, h: Tensor, vec: Tensor, rbf: Tensor, fcut: Tensor, edge_index: Tensor
                ) -> tuple[Tensor, Tensor]:
        """Args:
            h: [N, F] features.
            vec: [E, 3] current edge vectors i -> j, Å.
            rbf: [E, num_rbf] radial basis of ``|vec|``.
            fcut: [E] envelope of the input distance.
            edge_index: [2, E] (neighbour j, centre i).

        Returns:
            ``(h', dx)``: [N, F] updated features (residual) and [N, 3] displacement of each atom, Å.
        """
        n = h.size(0)
        out = self.propagate(edge_index, h=h, vec=vec, rbf=rbf, fcut=fcut, size=(n, n)) / self.norm
        m, dx = out.split([self.hidden, 3], dim=-1)
        return h + self.phi_h(torch.cat([h, m], dim=-1)), dx

    def message(self, h_i: Tensor, h_j: Tensor, vec: Tensor, rbf: Tensor, fcut: Tensor) -> Tensor:
        """Per-edge [E, F + 3]: the message and the coordinate update ``(x_i - x_j) tanh(phi_x(m))``."""
        m = self.phi_e(torch.cat([h_i, h_j, rbf], dim=-1)) * fcut.unsqueeze(-1)
        return torch.cat([m, -vec * torch.tanh(self.phi_x(m))], dim=-1)


class EGNN(torch.nn.Module):
    """EGNN encoder returning invariant per-atom features.

    Args:
        hidden: Number of features F.
        layers: Number of EGNN layers.
        cutoff: Cutoff radius rc, Å.
        num_rbf: Bessel basis size for distances.
        max_z: Largest atomic number embedded.
        avg_num_neighbors: Normalisation of the summed messages.
    """

    def __init__(self, hidden: int = 128, layers: int = 4, cutoff: float = 5.0, num_rbf: int = 20,
                 max_z: int = 100, avg_num_neighbors: float = 32.0) -> None:
        super().__init__()
        self.hidden, self.cutoff = hidden, cutoff
        self.embedding = Embedding(max_z + 1, hidden)
        self.rbf = BesselBasis(num_rbf, cutoff)
        self.layers = torch.nn.ModuleList([EGNNLayer(hidden, num_rbf, avg_num_neighbors) for _ in range(layers)])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reinitialise all weights."""
        self.embedding.reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()

    def forward(self, z: Tensor, vec: Tensor, edge_index: Tensor) -> Tensor:
        """Encode atoms.

        Args:
            z: [N] atomic numbers.
            vec: [E, 3] edge vectors i -> j, Å (within the cutoff).
            edge_index: [2, E] (neighbour j, centre i).

        Returns:
            [N, F] invariant atom features.
        """
        j, i = edge_index[0], edge_index[1]
        fcut = cosine_cutoff(torch.linalg.vector_norm(vec, dim=-1), self.cutoff)
        h = self.embedding(z)
        disp = vec.new_zeros(z.size(0), 3)
        for layer in self.layers:
            cur = vec + disp[j] - disp[i]
            rbf = self.rbf(torch.linalg.vector_norm(cur, dim=-1))
            h, dx = layer(h, cur, rbf, fcut, edge_index)
            disp = disp + dx
        return h
