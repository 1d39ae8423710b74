"""DimeNet's spherical Fourier-Bessel basis, evaluated numerically instead of through SymPy.

PyG's ``SphericalBasisLayer`` derives the spherical Bessel functions and spherical harmonics symbolically with
SymPy (``simplify`` of every ``j_l(z_ln x)``) each time a model is built: 20 to 40 s per DimeNet++ on these
machines, paid again by every training process (every HPO trial), and its ``lambdify``-ed expressions then cost
dozens of elementwise ops each per triplet in every forward and backward. The same functions, written as the
Rayleigh formulas ``j_l(x) = sin(x) A_l(1/x) + cos(x) B_l(1/x)`` (integer polynomial coefficients from the
recurrence ``j_{l+1} = (2l + 1) j_l / x - j_{l-1}``) and ``Y_l^0(θ) = sqrt((2l + 1) / 4π) P_l(cos θ)`` (Legendre
recurrence), build in milliseconds and evaluate with a few ops per order; the zeros ``z_ln`` of ``j_l`` come
from SciPy's root finder, as in PyG. Below ``x = l / 2`` the closed forms cancel catastrophically (PyG's as
well: in fp32 ``j_6`` of a short bond has no correct digit), and the power series is used there instead.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.special import spherical_jn
from torch import Tensor
from torch_geometric.nn.models.dimenet import Envelope


def spherical_bessel_zeros(orders: int, count: int) -> np.ndarray:
    """The first ``count`` positive zeros of ``j_l`` for ``l < orders``, [orders, count] (float64).

    The zeros of ``j_l`` interlace those of ``j_{l-1}`` (starting from ``j_0``'s ``k π``), so each is bracketed
    by two consecutive zeros of the order below.
    """
    zeros = np.zeros((orders, count))
    points = np.arange(1, count + orders) * np.pi  # zeros of j_0
    zeros[0] = points[:count]
    for order in range(1, orders):
        points = np.array([brentq(lambda r, o=order: spherical_jn(o, r), points[k], points[k + 1])
                           for k in range(len(points) - 1)])
        zeros[order] = points[:count]
    return zeros


def rayleigh_coefficients(orders: int) -> tuple[np.ndarray, np.ndarray]:
    """``(A, B)``, each [orders, orders + 1]: ``j_l(x) = sum_p A[l, p] x^-p sin x + B[l, p] x^-p cos x``."""
    a = np.zeros((orders + 1, orders + 2))
    b = np.zeros((orders + 1, orders + 2))
    a[0, 1] = 1.0  # j_0 = sin x / x
    a[1, 2], b[1, 1] = 1.0, -1.0  # j_1 = sin x / x^2 - cos x / x
    for order in range(1, orders):
        a[order + 1, 1:] = (2 * order + 1) * a[order, :-1]
        b[order + 1, 1:] = (2 * order + 1) * b[order, :-1]
        a[order + 1] -= a[order - 1]
        b[order + 1] -= b[order - 1]
    return a[:orders, :orders + 1], b[:orders, :orders + 1]


class SphericalBasis(torch.nn.Module):
    """The basis DimeNet's interaction blocks take (drop-in for PyG's ``SphericalBasisLayer``).

    ``a_{ln}(d_kj, θ_kji) = e(d_kj / c) N_ln j_l(z_ln d_kj / c) Y_l^0(θ_kji)`` with the envelope ``e`` and
    ``N_ln = (j_{l+1}(z_ln)^2 / 2)^{-1/2}``.

    Args:
        num_spherical: Orders L of the spherical harmonics (and Bessel functions).
        num_radial: Roots K per order.
        cutoff: Cutoff radius c, Å.
        envelope_exponent: Shape of the smooth cutoff (PyG's ``Envelope``).
    """

    def __init__(self, num_spherical: int, num_radial: int, cutoff: float = 5.0,
                 envelope_exponent: int = 5) -> None:
        super().__init__()
        self.num_spherical, self.num_radial, self.cutoff = num_spherical, num_radial, cutoff
        self.envelope = Envelope(envelope_exponent)
        zeros = spherical_bessel_zeros(num_spherical, num_radial)
        norm = np.stack([1.0 / np.sqrt(0.5 * spherical_jn(order + 1, zeros[order]) ** 2)
                         for order in range(num_spherical)])
        a, b = rayleigh_coefficients(num_spherical)
        # derived constants, not parameters: not saved in checkpoints (a model rebuilds them from its config)
        self.register_buffer("zeros", torch.from_numpy(zeros), persistent=False)  # [L, K]
        self.register_buffer("norm", torch.from_numpy(norm), persistent=False)  # [L, K]
        self.coef_sin: list[list[float]] = a.tolist()
        self.coef_cos: list[list[float]] = b.tolist()
        self.sph_norm = [math.sqrt((2 * order + 1) / (4 * math.pi)) for order in range(num_spherical)]

    def radial(self, dist: Tensor) -> Tensor:
        """``e(d / c) N_ln j_l(z_ln d / c)``: [E] distances, Å -> [E, L * K] (order-major)."""
        x = dist / self.cutoff
        arg = x.view(-1, 1, 1) * self.zeros.to(x.dtype)  # [E, L, K]
        s, c, u = torch.sin(arg), torch.cos(arg), torch.reciprocal(arg)
        out = []
        for order in range(self.num_spherical):
            al, ul = arg[:, order], u[:, order]
            closed = s[:, order] * _horner(self.coef_sin[order], ul) + c[:, order] * _horner(self.coef_cos[order], ul)
            if order >= 2:  # below x ~ l the closed form cancels (all of fp32's digits at l = 6): power series there
                closed = torch.where(al < 0.5 * order, _small_x_series(order, al), closed)
            out.append(closed)
        j = torch.stack(out, dim=1) * self.norm.to(x.dtype)  # [E, L, K]
        return (self.envelope(x).view(-1, 1, 1) * j).reshape(x.size(0), self.num_spherical * self.num_radial)

    def angular(self, angle: Tensor) -> Tensor:
        """``Y_l^0(θ)``: [T] angles, rad -> [T, L]."""
        z = torch.cos(angle)
        legendre = [torch.ones_like(z), z]
        for order in range(2, self.num_spherical):
            legendre.append(((2 * order - 1) * z * legendre[-1] - (order - 1) * legendre[-2]) / order)
        return torch.stack([p * k for p, k in zip(legendre, self.sph_norm, strict=False)], dim=1)

    def forward(self, dist: Tensor, angle: Tensor, idx_kj: Tensor) -> Tensor:
        """The basis of every triplet.

        Args:
            dist: [E] edge lengths, Å.
            angle: [T] angle between the edges k -> j and j -> i of each triplet, rad.
            idx_kj: [T] the edge k -> j of each triplet.

        Returns:
            [T, L * K], order-major (as PyG's layer).
        """
        rbf = self.radial(dist)[idx_kj].view(-1, self.num_spherical, self.num_radial)
        return (rbf * self.angular(angle).unsqueeze(-1)).view(-1, self.num_spherical * self.num_radial)


#: Terms of :func:`_small_x_series`: at x = l / 2 the last one is below 1e-16 of the first for every l <= 12.
SERIES_TERMS = 12


def _small_x_series(order: int, x: Tensor) -> Tensor:
    """``j_l(x) = x^l / (2l + 1)!! sum_k (-x^2 / 2)^k / (k! (2l + 3)(2l + 5) ... (2l + 2k + 1))`` (for x < l / 2)."""
    double_factorial = math.prod(range(1, 2 * order + 2, 2))
    h = -0.5 * x * x
    term = torch.ones_like(x)
    total = term
    for k in range(1, SERIES_TERMS):
        term = term * h / (k * (2 * order + 2 * k + 1))
        total = total + term
    return x ** order / double_factorial * total


def _horner(coefficients: list[float], u: Tensor) -> Tensor:
    """``sum_p coefficients[p] u^p`` (trailing zero coefficients skipped)."""
    top = max((p for p, cf in enumerate(coefficients) if cf != 0.0), default=0)
    acc = torch.full_like(u, coefficients[top])
    for p in range(top - 1, -1, -1):
        acc = acc * u + coefficients[p] if coefficients[p] != 0.0 else acc * u
    return acc
