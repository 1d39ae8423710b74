"""Edge geometry shared by every message-passing family: edge vectors, strain, cutoff envelopes, radial bases.

Edge vectors are always recomputed from positions (and the cell, for periodic images) so that forces and stress
are exact autograd derivatives of the energy. No family builds its own neighbour list.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def edge_vectors(pos: Tensor, cell: Tensor, edge_index: Tensor, shift: Tensor, batch: Tensor) -> Tensor:
    """Vectors from each centre atom ``i`` to its neighbour ``j`` (periodic images included).

    ``r_ij = pos[j] - pos[i] + shift_ij @ cell[graph(i)]`` with ``j, i = edge_index``.

    Args:
        pos: [N, 3] positions, Å.
        cell: [G, 3, 3] lattice vectors as rows, Å (zeros for molecules).
        edge_index: [2, E] ``edge_index[0]`` = neighbour j, ``edge_index[1]`` = centre i.
        shift: [E, 3] integer cell shifts (any float or int dtype).
        batch: [N] graph index of each atom.

    Returns:
        [E, 3] edge vectors, Å, in the dtype of ``pos``.
    """
    j, i = edge_index[0], edge_index[1]
    offset = torch.bmm(shift.to(pos.dtype).unsqueeze(1), cell.to(pos.dtype)[batch[i]]).squeeze(1)
    return pos[j] - pos[i] + offset


def reverse_edge_pairs(edge_index: Tensor, vec: Tensor) -> tuple[Tensor, Tensor] | None:
    """Pair every edge ``i -> j`` with its reverse ``j -> i`` (the same image pair, vector exactly negated).

    Full neighbour lists hold each pair twice, and :func:`edge_vectors` makes ``r_ji == -r_ij`` bit for bit
    (IEEE rounding is sign-symmetric), so anything that depends only on ``|r_ij|`` (radial bases, envelopes,
    filters) can be computed once per pair. The pairing is found by sorting a hash of the orientation-free key
    ``(min(i, j), max(i, j), +-r)`` and is then verified exactly; the result is ``None`` (use every edge)
    whenever the list is not symmetric, contains zero-length or duplicate edges, or a hash collision left a
    pair unmatched.

    Args:
        edge_index: [2, E] (neighbour j, centre i).
        vec: [E, 3] edge vectors i -> j (float32 or float64; only their bits are read).

    Returns:
        ``(fwd, rev)``, each [E / 2] int64 edge ids with ``edge_index[:, rev] == edge_index.flip(0)[:, fwd]``
        and ``vec[rev] == -vec[fwd]``; or ``None``.
    """
    num = edge_index.size(1)
    if num == 0 or num % 2 or vec.dtype not in (torch.float32, torch.float64):
        return None
    with torch.no_grad():
        j, i = edge_index[0], edge_index[1]
        v = vec.detach()
        # orientation: i < j, or i == j (periodic image of itself) and the first non-zero component of r > 0
        first = torch.where(v[:, 0] != 0, v[:, 0], torch.where(v[:, 1] != 0, v[:, 1], v[:, 2]))
        if bool((first == 0).any()):
            return None
        forward = (i < j) | ((i == j) & (first > 0))
        lo, hi = torch.where(forward, i, j), torch.where(forward, j, i)
        canon = torch.where(forward.unsqueeze(1), v, -v) + 0.0  # + 0.0 turns -0.0 into 0.0 (x - x is +0.0)
        bits = canon.contiguous().view(torch.int32 if v.dtype == torch.float32 else torch.int64).long()
        key = lo * 0x9E3779B1 + hi
        for col in range(3):
            key = (key ^ bits[:, col]) * 0x5BD1E9955BD1E995  # wraps around in int64, a hash mixing step
        order = torch.argsort(key)
        a, b = order[0::2], order[1::2]  # each pair must sit next to each other after sorting
        fa = forward[a]
        fwd, rev = torch.where(fa, a, b), torch.where(fa, b, a)
        ok = (
            bool((forward[fwd] & ~forward[rev]).all())
            and torch.equal(edge_index[0, rev], edge_index[1, fwd])
            and torch.equal(edge_index[1, rev], edge_index[0, fwd])
            and torch.equal(v[rev], -v[fwd])
        )
    return (fwd, rev) if ok else None


def apply_strain(pos: Tensor, cell: Tensor, batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Deform positions and cells by a zero symmetric strain that autograd can differentiate against.

    ``pos' = pos (1 + eps_sym)``, ``cell' = cell (1 + eps_sym)``; at ``eps = 0`` the geometry is unchanged and
    ``stress = (1 / V) dE/d eps``, the sign convention of ``ase.Atoms.get_stress`` (a compressed cell that
    pushes outwards has negative stress).

    Args:
        pos: [N, 3] positions, Å.
        cell: [G, 3, 3] lattice vectors as rows, Å.
        batch: [N] graph index of each atom.

    Returns:
        ``(pos', cell', eps)`` with ``eps`` the [G, 3, 3] leaf tensor (requires grad) to differentiate against.
    """
    eps = torch.zeros_like(cell, requires_grad=True)
    sym = 0.5 * (eps + eps.transpose(1, 2))
    pos = pos + torch.bmm(pos.unsqueeze(1), sym[batch]).squeeze(1)
    cell = cell + torch.bmm(cell, sym)
    return pos, cell, eps


def cell_volume(cell: Tensor) -> Tensor:
    """Absolute volume of each cell, [G] in Å^3 (zero for molecules)."""
    return torch.linalg.det(cell).abs()


def cosine_cutoff(dist: Tensor, cutoff: float) -> Tensor:
    """Cosine envelope ``0.5 (cos(pi r / rc) + 1)`` for ``r < rc``, else 0: value and slope vanish at rc.

    Args:
        dist: [E] distances, Å.
        cutoff: rc, Å.

    Returns:
        [E] envelope in [0, 1].
    """
    return 0.5 * (torch.cos(dist * (math.pi / cutoff)) + 1.0) * (dist < cutoff).to(dist.dtype)


def polynomial_cutoff(dist: Tensor, cutoff: float, p: int = 6) -> Tensor:
    """Polynomial envelope of DimeNet/MACE: 1 at 0, value and first two derivatives vanish at rc.

    ``u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)``, ``x = r / rc``.

    Args:
        dist: [E] distances, Å.
        cutoff: rc, Å.
        p: Exponent (DimeNet's ``envelope_exponent + 1``).

    Returns:
        [E] envelope in [0, 1].
    """
    x = dist / cutoff
    out = (
        1.0
        - (p + 1.0) * (p + 2.0) / 2.0 * x.pow(p)
        + p * (p + 2.0) * x.pow(p + 1)
        - p * (p + 1.0) / 2.0 * x.pow(p + 2)
    )
    return out * (x < 1.0).to(dist.dtype)


class GaussianBasis(torch.nn.Module):
    """Radial Gaussians ``exp(-(r - mu_n)^2 / (2 w^2))`` with ``num_rbf`` centres ``mu_n`` evenly spread over
    [0, rc] and the width ``w`` their spacing (SchNet's and schnetpack's PaiNN's basis).

    Args:
        num_rbf: Number of basis functions (>= 2).
        cutoff: rc, Å.
    """

    def __init__(self, num_rbf: int, cutoff: float) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("centres", torch.linspace(0.0, cutoff, num_rbf, dtype=torch.get_default_dtype()))
        self.coeff = -0.5 / (cutoff / (num_rbf - 1)) ** 2

    def forward(self, dist: Tensor) -> Tensor:
        """Args: dist: [E] distances, Å. Returns: [E, num_rbf]."""
        return torch.exp(self.coeff * (dist.unsqueeze(-1) - self.centres.to(dist.dtype)) ** 2)


class BesselBasis(torch.nn.Module):
    """Radial Bessel basis ``sqrt(2/rc) sin(n pi r / rc) / r`` with learnable frequencies (PaiNN, MACE).

    Args:
        num_rbf: Number of basis functions.
        cutoff: rc, Å.
        trainable: Whether the frequencies are learned.
    """

    def __init__(self, num_rbf: int, cutoff: float, trainable: bool = False) -> None:
        super().__init__()
        self.cutoff = cutoff
        freq = torch.arange(1, num_rbf + 1, dtype=torch.get_default_dtype()) * math.pi / cutoff
        if trainable:
            self.freq = torch.nn.Parameter(freq)
        else:
            self.register_buffer("freq", freq)
        self.prefactor = math.sqrt(2.0 / cutoff)

    def forward(self, dist: Tensor) -> Tensor:
        """Args: dist: [E] distances, Å. Returns: [E, num_rbf]."""
        d = dist.unsqueeze(-1)
        return self.prefactor * torch.sin(self.freq.to(d.dtype) * d) / d
