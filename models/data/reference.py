"""Per-dataset element reference energies fitted by (ridge-regularised) least squares on composition.

``E_total ≈ Σ_Z n_Z e_Z``; the per-graph ``eref = Σ_Z n_Z e_Z`` is stored so targets can be normalised as
``energy - eref``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def composition_matrix(zs: Sequence[np.ndarray], elements: np.ndarray) -> np.ndarray:
    """[G, K] counts of each of the ``K`` ``elements`` (sorted, as ``np.unique`` gives them) in each of the ``G``
    structures.

    Raises:
        KeyError: A structure holds an element not in ``elements``.
    """
    elements = np.asarray(elements, dtype=np.int64)
    if len(zs) == 0:
        return np.zeros((0, elements.shape[0]))
    z = np.concatenate([np.asarray(x, dtype=np.int64) for x in zs])
    col = np.searchsorted(elements, z).clip(max=max(elements.shape[0] - 1, 0))
    if z.size and (elements.shape[0] == 0 or not np.array_equal(elements[col], z)):
        raise KeyError(f"elements {sorted(set(z.tolist()) - set(elements.tolist()))} not in {elements.tolist()}")
    graph = np.repeat(np.arange(len(zs)), [len(x) for x in zs])
    k = elements.shape[0]
    return np.bincount(graph * k + col, minlength=len(zs) * k).reshape(len(zs), k).astype(np.float64)


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


def composition_factor(zs: Sequence[np.ndarray], energies: np.ndarray) -> dict[str, object]:
    """The least-squares summary of one part of a dataset, for fitting references over all parts (TSQR).

    With ``A = Q R`` the reduced QR decomposition of the part's [G, K] composition matrix,
    ``||A e - E||² = ||R e - Qᵀ E||² + const``: stacking the ``R`` and ``Qᵀ E`` of every part and solving
    gives the same references as one fit over all structures, from ``K × K`` numbers per part.

    Args:
        zs: ``G`` arrays of atomic numbers.
        energies: [G] total energies, eV.

    Returns:
        JSON-serialisable ``{"elements": [K] int, "r": [min(G, K), K], "qty": [min(G, K)] eV,
        "num_graphs": G}``.
    """
    if len(zs) == 0:
        return {"elements": [], "r": [], "qty": [], "num_graphs": 0}
    elements = np.unique(np.concatenate([np.asarray(z) for z in zs]))
    a = composition_matrix(zs, elements)
    q, r = np.linalg.qr(a, mode="reduced")
    qty = q.T @ np.asarray(energies, dtype=np.float64)
    return {
        "elements": [int(e) for e in elements],
        "r": r.tolist(),
        "qty": qty.tolist(),
        "num_graphs": len(zs),
    }


def _stacked(factors: Sequence[dict[str, object]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(elements [K], R rows [M, K], Qᵀ E [M], G)`` of the non-empty factors, on the union of their elements."""
    parts = [f for f in factors if int(f["num_graphs"]) > 0]  # type: ignore[call-overload]
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0)), np.zeros(0), 0
    elements = np.unique(np.concatenate([np.asarray(f["elements"], dtype=np.int64) for f in parts]))
    col = {int(e): k for k, e in enumerate(elements)}
    rows, rhs = [], []
    for f in parts:
        r = np.asarray(f["r"], dtype=np.float64).reshape(-1, len(f["elements"]))  # type: ignore[arg-type]
        full = np.zeros((r.shape[0], len(elements)))
        full[:, [col[int(e)] for e in f["elements"]]] = r  # type: ignore[attr-defined]
        rows.append(full)
        rhs.append(np.asarray(f["qty"], dtype=np.float64))
    total = sum(int(f["num_graphs"]) for f in parts)  # type: ignore[call-overload]
    return elements, np.vstack(rows), np.concatenate(rhs), total


def combine_factors(factors: Sequence[dict[str, object]]) -> dict[str, object]:
    """One :func:`composition_factor` of the union of the factors' structures (TSQR: a QR of their stacked
    ``R`` s, ``K × K`` numbers whatever the number of structures)."""
    elements, a, y, total = _stacked(factors)
    if total == 0:
        return {"elements": [], "r": [], "qty": [], "num_graphs": 0}
    q, r = np.linalg.qr(a, mode="reduced")
    return {"elements": [int(e) for e in elements], "r": r.tolist(), "qty": (q.T @ y).tolist(),
            "num_graphs": total}


def fit_reference_energies_from_factors(
    factors: Sequence[dict[str, object]], ridge: float = 1e-8
) -> dict[int, float]:
    """Fit one reference energy per element from the :func:`composition_factor` of every part.

    Solves the same problem as :func:`fit_reference_energies` on the union of the parts
    (``min ||A e - E||² + ridge · G · ||e||²``, ``G`` the total number of structures).

    Returns:
        ``{Z: e_Z}`` in eV for every element present in any part.
    """
    elements, a, y, total = _stacked(factors)
    if total == 0:
        return {}
    lam = np.sqrt(max(ridge, 0.0) * total)
    if lam > 0:
        a = np.vstack([a, lam * np.eye(len(elements))])
        y = np.concatenate([y, np.zeros(len(elements))])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    return {int(e): float(c) for e, c in zip(elements, coef, strict=True)}


def reference_sums(z: np.ndarray, natoms: np.ndarray, references: dict[int, float]) -> np.ndarray:
    """[G] ``Σ_atoms e_Z`` per graph of concatenated atomic numbers ``z`` [N] with ``natoms`` [G] (eV).

    Sums in atom order, so each value equals :func:`reference_sum` of that graph exactly.
    """
    table = np.zeros(max([119, *[int(k) + 1 for k in references]]), dtype=np.float64)
    for k, v in references.items():
        table[int(k)] = v
    graph = np.repeat(np.arange(natoms.size, dtype=np.int64), natoms)
    return np.bincount(graph, weights=table[np.asarray(z, dtype=np.int64)], minlength=natoms.size)


class RunningStats:
    """Mean, standard deviation, minimum and maximum of values seen in batches, in constant memory (batches merged
    with Chan et al.'s pairwise update of the mean and the sum of squared deviations)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.lo, self.hi = math.inf, -math.inf

    def add(self, values: np.ndarray) -> None:
        """Take the batch ``values`` [n]."""
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if not v.size:
            return
        mean_b = float(v.mean())
        m2_b = float(((v - mean_b) ** 2).sum())
        n = self.n + v.size
        delta = mean_b - self.mean
        self.mean += delta * v.size / n
        self.m2 += m2_b + delta * delta * self.n * v.size / n
        self.n = n
        self.lo, self.hi = min(self.lo, float(v.min())), max(self.hi, float(v.max()))

    def result(self) -> dict[str, float] | None:
        """``{"mean", "std", "min", "max"}`` of every value taken (population std, as ``numpy.std``); None when
        none was."""
        if not self.n:
            return None
        return {"mean": self.mean, "std": math.sqrt(self.m2 / self.n), "min": self.lo, "max": self.hi}

