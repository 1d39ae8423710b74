"""The numerical spherical Fourier-Bessel basis against SciPy's functions and PyG's SymPy-derived layer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import eval_legendre, spherical_jn

from models.nn.dimenet_basis import SphericalBasis, rayleigh_coefficients, spherical_bessel_zeros


def test_zeros_are_roots_in_order() -> None:
    zeros = spherical_bessel_zeros(7, 6)
    for order in range(7):
        assert np.all(np.abs(spherical_jn(order, zeros[order])) < 1e-12)
        assert np.all(np.diff(zeros[order]) > 2.0)  # consecutive roots, none skipped (spacing ~ pi)
    assert np.all(zeros[1:, 0] > zeros[:-1, 0])  # interlacing: the first root moves out with the order


def test_rayleigh_formulas_give_scipys_bessel_functions() -> None:
    """Where the basis uses them (x >= l / 2; below, the closed forms cancel and the series takes over)."""
    a, b = rayleigh_coefficients(7)
    for order in range(7):
        x = np.linspace(max(0.5, order / 2), 30.0, 500)
        val = sum(a[order, p] * x ** -p * np.sin(x) + b[order, p] * x ** -p * np.cos(x) for p in range(8))
        np.testing.assert_allclose(val, spherical_jn(order, x), rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_short_bonds_keep_their_digits(dtype: torch.dtype) -> None:
    """N_ln j_l(z_ln d / c) for d from 0.3 Å, every order, to the dtype's precision of the basis's scale (PyG's
    fp32 closed form of j_6 is off by ~0.4 at 0.3 Å, on values of order 10)."""
    basis = SphericalBasis(7, 6, cutoff=5.0).to(dtype)
    dist = torch.linspace(0.3, 4.9, 300, dtype=dtype)
    got = (basis.radial(dist) / basis.envelope(dist / 5.0).unsqueeze(-1)).view(300, 7, 6).double().numpy()
    zeros = spherical_bessel_zeros(7, 6)
    x = dist.double().numpy() / 5.0
    tol = 1e-11 if dtype == torch.float64 else 2e-5
    for order in range(7):
        norm = 1.0 / np.sqrt(0.5 * spherical_jn(order + 1, zeros[order]) ** 2)
        ref = norm * spherical_jn(order, zeros[order][None] * x[:, None])
        np.testing.assert_allclose(got[:, order], ref, rtol=tol, atol=tol * np.abs(ref).max())


def test_basis_equals_the_definition() -> None:
    """e(d/c) N_ln j_l(z_ln d/c) Y_l^0(θ), with SciPy's j_l and P_l, fp64."""
    basis = SphericalBasis(7, 6, cutoff=5.0, envelope_exponent=5).double()
    g = torch.Generator().manual_seed(0)
    dist = 0.8 + 4.1 * torch.rand(40, generator=g, dtype=torch.float64)
    angle = math.pi * torch.rand(90, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 40, (90,), generator=g)
    out = basis(dist, angle, idx).view(90, 7, 6).numpy()
    zeros = spherical_bessel_zeros(7, 6)
    x = (dist / 5.0).numpy()[idx.numpy()]
    env = basis.envelope(torch.from_numpy(x)).numpy()
    for order in range(7):
        norm = 1.0 / np.sqrt(0.5 * spherical_jn(order + 1, zeros[order]) ** 2)
        y = math.sqrt((2 * order + 1) / (4 * math.pi)) * eval_legendre(order, np.cos(angle.numpy()))
        ref = env[:, None] * norm * spherical_jn(order, zeros[order][None] * x[:, None]) * y[:, None]
        np.testing.assert_allclose(out[:, order], ref, rtol=1e-9, atol=1e-10)


def test_matches_pygs_sympy_layer() -> None:
    """The layer it replaces, at a size SymPy derives in about a second (PyG's zeros are float32)."""
    from torch_geometric.nn.models.dimenet import SphericalBasisLayer

    ours, ref = SphericalBasis(3, 2, 5.0, 5).double(), SphericalBasisLayer(3, 2, 5.0, 5)
    dist = torch.linspace(0.7, 4.99, 50, dtype=torch.float64)
    angle = torch.linspace(0.01, 3.13, 80, dtype=torch.float64)
    idx = torch.arange(80) % 50
    torch.testing.assert_close(ours(dist, angle, idx), ref(dist, angle, idx), rtol=1e-5, atol=1e-5)


def test_constants_are_not_checkpointed() -> None:
    """Zeros and norms are rebuilt from the config: checkpoints of models built with PyG's layer still load."""
    assert dict(SphericalBasis(7, 6).state_dict()) == {}
