"""Per-dataset element reference energies fitted by (ridge-regularised) least squares on composition.

``E_total ≈ Σ_Z n_Z e_Z``; the per-graph ``eref = Σ_Z n_Z e_Z`` is stored so targets can be normalised as
``energy - eref``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def composition_matrix(zs: Sequence[np.ndarray], elements: np.ndarray) -> np.ndarray:
    """[G, K] counts of each of the ``K`` ``elements`` in each of the ``G`` structures."""
    col = {int(e): k for k, e in enumerate(elements)}
    a = np.zeros((len(zs), len(elements)), dtype=np.float64)
    for g, z in enumerate(zs):
        uz, cnt = np.unique(z, return_counts=True)
        a[g, [col[int(x)] for x in uz]] = cnt
    return a


def fit_reference_energies(
    zs: Sequence[np.ndarray], energies: np.ndarray, ridge: float = 1e-8
) -> dict[int, float]:
    """Fit one reference energy per element.

    Solves ``min ||A e - E||² + ridge · G · ||e||²`` with ``A`` the composition matrix (an augmented
    ``numpy.linalg.lstsq`` so rank-deficient compositions, e.g. only H2O molecules, still give a unique answer).

    Args:
        zs: ``G`` arrays of atomic numbers.
        energies: [G] total energies, eV.
        ridge: Regularisation strength (relative to the number of structures).

    Returns:
        ``{Z: e_Z}`` in eV for every element present.
    """
    if len(zs) == 0:
        return {}
    elements = np.unique(np.concatenate([np.asarray(z) for z in zs]))
    a = composition_matrix(zs, elements)
    y = np.asarray(energies, dtype=np.float64)
    lam = np.sqrt(max(ridge, 0.0) * len(zs))
    if lam > 0:
        a = np.vstack([a, lam * np.eye(len(elements))])
        y = np.concatenate([y, np.zeros(len(elements))])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    return {int(e): float(c) for e, c in zip(elements, coef, strict=True)}


def reference_sum(z: np.ndarray, references: dict[int, float]) -> float:
    """``Σ_atoms e_Z`` for one structure (eV); elements without a reference count 0."""
    return float(sum(references.get(int(x), 0.0) for x in z))
