"""MACE-style higher-order equivariant message passing (Batatia et al. 2022) on e3nn building blocks.

Per layer: a radial-weighted tensor-product convolution of the node features with the spherical harmonics of
the edges (the "A" basis), then a symmetric channel-wise contraction of correlation order up to 2 (the "B"
basis: ``A`` and ``A x A`` with element-dependent weights), a linear update and a residual self-connection.
Correlation order 2 (not MACE's usual 3) is what this implementation supports; it is not mace-torch and
cannot load MACE's published checkpoints (docs/model-families.md says how it differs and why). The invariant (0e) channels of
every layer are read out and summed into the per-atom features.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import Tensor
from torch.nn import Embedding, Linear, Sequential, SiLU
from torch_geometric.utils import scatter

from models.nn.geometry import BesselBasis, polynomial_cutoff


def _conv_instructions(irreps_in: o3.Irreps, irreps_sh: o3.Irreps, target: o3.Irreps
                       ) -> tuple[o3.Irreps, list[tuple[int, int, int, str, bool]]]:
    """'uvu' tensor-product paths from ``irreps_in x irreps_sh`` to the irreps present in ``target``."""
    wanted = {ir for _, ir in target}
    out: list[tuple[int, o3.Irrep]] = []
    instructions = []
    for i1, (mul, ir1) in enumerate(irreps_in):
        for i2, (_, ir2) in enumerate(irreps_sh):
            for ir_out in ir1 * ir2:
                if ir_out in wanted:
                    instructions.append((i1, i2, len(out), "uvu", True))
                    out.append((mul, ir_out))
    irreps_out = o3.Irreps(out)
    irreps_sorted, perm, _ = irreps_out.sort()
    return irreps_sorted, [(a, b, perm[c], m, w) for a, b, c, m, w in instructions]


class SymmetricContraction(torch.nn.Module):
    """Channel-wise symmetric contraction of correlation order 1 or 2 with element-dependent weights.

    ``B_c = w1[z] * A_c + sum_paths w2[z, path, c] (A_c x A_c)_path`` for every channel c and output irrep.

    Args:
        irreps: Irreps of ``A`` and of the output (every irrep with the same multiplicity).
        max_z: Largest atomic number.
        correlation: 1 or 2.
    """

    def __init__(self, irreps: o3.Irreps, max_z: int, correlation: int = 2) -> None:
        super().__init__()
        if correlation not in (1, 2):
            raise ValueError(f"correlation must be 1 or 2, got {correlation}")
        self.irreps, self.correlation = irreps, correlation
        mul = irreps[0].mul
        self.w1 = Embedding(max_z + 1, mul * len(irreps))
        self.mul = mul
        self.square: o3.TensorProduct | None = None
        if correlation == 2:
            instructions = []
            for i1, (_, ir1) in enumerate(irreps):
                for i2, (_, ir2) in enumerate(irreps):
                    if i2 < i1:
                        continue
                    for io, (_, ir_out) in enumerate(irreps):
                        if ir_out in ir1 * ir2:
                            instructions.append((i1, i2, io, "uuu", True))
            self.square = o3.TensorProduct(irreps, irreps, irreps, instructions, shared_weights=False,
                                           internal_weights=False)
            self.w2 = Embedding(max_z + 1, self.square.weight_numel)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reinitialise the element-dependent weights."""
        torch.nn.init.ones_(self.w1.weight)
        if self.square is not None:
            torch.nn.init.normal_(self.w2.weight, std=1.0)

    def forward(self, a: Tensor, z: Tensor) -> Tensor:
        """Args: a: [N, irreps.dim]; z: [N]. Returns [N, irreps.dim]."""
        w1 = self.w1(z)
        parts = []
        for k, (sl, (mul, ir)) in enumerate(zip(self.irreps.slices(), self.irreps, strict=True)):
            block = a[:, sl].reshape(-1, mul, ir.dim) * w1[:, k * mul:(k + 1) * mul].unsqueeze(-1)
            parts.append(block.reshape(-1, mul * ir.dim))
        out = torch.cat(parts, dim=-1)
        if self.square is not None:
            out = out + self.square(a, a, self.w2(z))
        return out


class MACEInteraction(torch.nn.Module):
    """One MACE layer: convolution, symmetric contraction, linear update with residual self-connection.

    Args:
        irreps_in: Irreps of the incoming node features.
        irreps_hidden: Irreps of the outgoing node features (e.g. ``128x0e + 128x1o``).
        irreps_sh: Irreps of the edge spherical harmonics.
        num_rbf: Radial basis size.
        max_z: Largest atomic number.
        avg_num_neighbors: Normalisation of the summed messages.
        correlation: Body order of the contraction (1 or 2).
        radial_hidden: Width of the radial MLP.
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_hidden: o3.Irreps, irreps_sh: o3.Irreps, num_rbf: int,
                 max_z: int, avg_num_neighbors: float, correlation: int = 2, radial_hidden: int = 64) -> None:
        super().__init__()
        self.avg_num_neighbors = avg_num_neighbors
        self.linear_up = o3.Linear(irreps_in, irreps_in)
        irreps_mid, instructions = _conv_instructions(irreps_in, irreps_sh, irreps_hidden)
        self.conv = o3.TensorProduct(irreps_in, irreps_sh, irreps_mid, instructions, shared_weights=False,
                                     internal_weights=False)
        # bias-free like MACE's radial MLP: zero input (edge at the cutoff) gives zero weights
        self.radial = Sequential(Linear(num_rbf, radial_hidden, bias=False), SiLU(),
                                 Linear(radial_hidden, radial_hidden, bias=False), SiLU(),
                                 Linear(radial_hidden, self.conv.weight_numel, bias=False))
        self.linear_a = o3.Linear(irreps_mid, irreps_hidden)
        self.contraction = SymmetricContraction(irreps_hidden, max_z, correlation)
        self.linear_b = o3.Linear(irreps_hidden, irreps_hidden)
        self.skip = o3.Linear(irreps_in, irreps_hidden)

    def forward(self, h: Tensor, z: Tensor, sh: Tensor, radial: Tensor, edge_index: Tensor) -> Tensor:
        """Args:
            h: [N, irreps_in.dim] node features.
            z: [N] atomic numbers.
            sh: [E, irreps_sh.dim] spherical harmonics of the edge directions.
            radial: [E, num_rbf] radial basis times the cutoff envelope.
            edge_index: [2, E] (neighbour j, centre i).

        Returns:
            [N, irreps_hidden.dim] updated node features.
        """
        j, i = edge_index[0], edge_index[1]
        up = self.linear_up(h)
        msg = self.conv(up[j], sh, self.radial(radial))
        a = scatter(msg, i, dim=0, dim_size=h.size(0), reduce="sum") / self.avg_num_neighbors
        b = self.contraction(self.linear_a(a), z)
        return self.linear_b(b) + self.skip(h)


class MACE(torch.nn.Module):
    """MACE-style encoder returning invariant per-atom features.

    Args:
        hidden: Channels F per irrep.
        layers: Number of interactions.
        cutoff: Cutoff radius rc, Å (polynomial envelope, p = 5).
        num_rbf: Bessel basis size.
        max_z: Largest atomic number embedded.
        max_ell: Largest degree of the edge spherical harmonics.
        hidden_ell: Largest degree of the hidden node features (``F x 0e + F x 1o + ...``).
        correlation: Body order of the symmetric contraction (1 or 2).
        avg_num_neighbors: Normalisation of the summed messages.
    """

    def __init__(self, hidden: int = 128, layers: int = 2, cutoff: float = 5.0, num_rbf: int = 8,
                 max_z: int = 100, max_ell: int = 2, hidden_ell: int = 1, correlation: int = 2,
                 avg_num_neighbors: float = 32.0) -> None:
        super().__init__()
        self.hidden, self.cutoff = hidden, cutoff
        self.irreps_sh = o3.Irreps.spherical_harmonics(max_ell)
        irreps_hidden = o3.Irreps([(hidden, (ell, (-1) ** ell)) for ell in range(hidden_ell + 1)])
        self.embedding = Embedding(max_z + 1, hidden)
        self.rbf = BesselBasis(num_rbf, cutoff)
        irreps_in = o3.Irreps(f"{hidden}x0e")
        interactions, readouts = [], []
        for _ in range(layers):
            interactions.append(MACEInteraction(irreps_in, irreps_hidden, self.irreps_sh, num_rbf, max_z,
                                                avg_num_neighbors, correlation))
            readouts.append(Linear(hidden, hidden))
            irreps_in = irreps_hidden
        self.interactions = torch.nn.ModuleList(interactions)
        self.readouts = torch.nn.ModuleList(readouts)

    def forward(self, z: Tensor, vec: Tensor, edge_index: Tensor) -> Tensor:
        """Encode atoms.

        Args:
            z: [N] atomic numbers.
            vec: [E, 3] edge vectors i -> j, Å (within the cutoff).
            edge_index: [2, E] (neighbour j, centre i).

        Returns:
            [N, F] invariant atom features (sum of the per-layer 0e read-outs).
        """
        dist = torch.linalg.vector_norm(vec, dim=-1)
        sh = o3.spherical_harmonics(self.irreps_sh, vec, normalize=True, normalization="component")
        radial = self.rbf(dist) * polynomial_cutoff(dist, self.cutoff, p=5).unsqueeze(-1)
        h = self.embedding(z)
        out = h.new_zeros(h.size(0), self.hidden)
        for interaction, readout in zip(self.interactions, self.readouts, strict=True):
            h = interaction(h, z, sh, radial, edge_index)
            out = out + readout(h[:, : self.hidden])
        return out
