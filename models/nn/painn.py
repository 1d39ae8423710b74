"""PaiNN: polarizable atom interaction neural network (Schütt, Unke, Gastegger, ICML 2021).

Scalar features ``s`` [N, F] and equivariant vector features ``v`` [N, 3, F] are updated by alternating message
and update blocks. The continuous filters of all layers are computed from the radial basis in one matmul.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Embedding, Linear, Sequential, SiLU
from torch_geometric.nn import MessagePassing

from models.nn.geometry import BesselBasis, cosine_cutoff


class PaiNNMessage(MessagePassing):
    """PaiNN message block: ``ds_i = sum_j phi(s_j) W(r_ij)``, ``dv_i = sum_j v_j dvv + dvs r_ij/|r_ij|``.

    Args:
        hidden: Number of features F.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__(aggr="add", node_dim=0)
        self.hidden = hidden
        self.phi = Sequential(Linear(hidden, hidden), SiLU(), Linear(hidden, 3 * hidden))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reinitialise the weights."""
        for lin in (self.phi[0], self.phi[2]):
            lin.reset_parameters()

    def forward(self, s: Tensor, v: Tensor, edge_index: Tensor, filt: Tensor, unit: Tensor) -> tuple[Tensor, Tensor]:
        """Apply one message block (residual).

        Args:
            s: [N, F] scalar features.
            v: [N, 3, F] vector features.
            edge_index: [2, E] (neighbour j, centre i).
            filt: [E, 3F] continuous filter of this layer, already multiplied by the cutoff envelope.
            unit: [E, 3] unit edge vectors i -> j.

        Returns:
            Updated ``(s, v)``: [N, F] and [N, 3, F].
        """
        n, f = s.size(0), self.hidden
        x = self.phi(s)
        out = self.propagate(edge_index, x=x, v=v.reshape(n, 3 * f), filt=filt, unit=unit, size=(n, n))
        ds, dv = out.split([f, 3 * f], dim=-1)
        return s + ds, v + dv.view(n, 3, f)

    def message(self, x_j: Tensor, v_j: Tensor, filt: Tensor, unit: Tensor) -> Tensor:
        """Per-edge message [E, 4F]: scalar part then the flattened vector part."""
        f = self.hidden
        ds, dvv, dvs = (x_j * filt).split(f, dim=-1)
        dv = v_j.view(-1, 3, f) * dvv.unsqueeze(1) + dvs.unsqueeze(1) * unit.unsqueeze(-1)
        return torch.cat([ds, dv.reshape(-1, 3 * f)], dim=-1)


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

    def forward(self, s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Args: s: [N, F]; v: [N, 3, F]. Returns the updated ``(s, v)`` (residual)."""
        f = self.hidden
        uv, vv = self.lin_uv(v).split(f, dim=-1)
        vnorm = torch.sqrt((vv * vv).sum(dim=1) + 1e-8)
        a_vv, a_sv, a_ss = self.mlp(torch.cat([s, vnorm], dim=-1)).split(f, dim=-1)
        ds = a_ss + a_sv * (uv * vv).sum(dim=1)
        return s + ds, v + a_vv.unsqueeze(1) * uv


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
        dist = torch.linalg.vector_norm(vec, dim=-1)
        unit = vec / dist.unsqueeze(-1)
        filt = self.filter_net(self.rbf(dist)) * cosine_cutoff(dist, self.cutoff).unsqueeze(-1)
        filters = filt.split(3 * self.hidden, dim=-1)
        s = self.embedding(z)
        v = s.new_zeros(s.size(0), 3, self.hidden)
        for msg, upd, w in zip(self.messages, self.updates, filters, strict=True):
            s, v = msg(s, v, edge_index, w, unit)
            s, v = upd(s, v)
        return s
