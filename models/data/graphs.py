"""Radius graphs with periodic boundaries and a max-neighbour cap, built with ``vesin``.

Convention (:mod:`models.keys`): ``edge_index[0]`` = neighbour j (source), ``edge_index[1]`` = centre i, and
integer cell shifts ``S`` such that ``r_ij = pos[j] - pos[i] + S @ cell``. Edge vectors are recomputed from
positions by the model, so only indices and shifts are stored.
"""

from __future__ import annotations

import numpy as np
import vesin

#: Neighbours of a centre whose distances differ by less than this (Å) are one shell: a cap never splits one.
SHELL_TOLERANCE = 1e-6
#: Non-periodic structures up to this many atoms are searched pair by pair (see :func:`radius_graph_pbc`).
ALL_PAIRS_MAX_ATOMS = 32


def cap_neighbours(
    i: np.ndarray, j: np.ndarray, shift: np.ndarray, dist: np.ndarray, max_neighbours: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sort edges by (centre, distance, neighbour) and keep at least the ``max_neighbours`` nearest per centre,
    never splitting a shell of equidistant neighbours.

    A cap that kept, say, 24 of a shell of 24 + 6 + 24 neighbours would keep an arbitrary part of the last shell
    (whichever the sort puts first): the graph, and every force and stress computed on it, would lose the
    crystal's symmetry (a perfect crystal would get forces). So a centre keeps every neighbour as close as its
    ``max_neighbours``-th one (within :data:`SHELL_TOLERANCE`): the cap is a lower bound on what is kept, met
    exactly when it falls between two shells.

    Args:
        i: [E] centre indices.
        j: [E] neighbour indices.
        shift: [E, 3] integer cell shifts.
        dist: [E] distances, Å.
        max_neighbours: Cap per centre; ``None`` keeps all.

    Returns:
        ``(i, j, shift, dist)`` sorted, capped.
    """
    order = np.lexsort((shift[:, 2], shift[:, 1], shift[:, 0], j, dist, i))
    i, j, shift, dist = i[order], j[order], shift[order], dist[order]
    if max_neighbours is not None and i.size:
        start = np.flatnonzero(np.r_[True, i[1:] != i[:-1]])
        counts = np.diff(np.r_[start, i.size])
        rank = np.arange(i.size) - np.repeat(start, counts)
        # the distance of each centre's max_neighbours-th neighbour (or its farthest, when it has fewer)
        last = start + np.minimum(counts, max_neighbours) - 1
        bound = np.repeat(dist[last], counts)
        keep = (rank < max_neighbours) | (dist <= bound + SHELL_TOLERANCE)
        i, j, shift, dist = i[keep], j[keep], shift[keep], dist[keep]
    return i, j, shift, dist


def radius_graph_pbc(
    pos: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    cutoff: float,
    max_neighbours: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs closer than ``cutoff`` (periodic images included), nearest ``max_neighbours`` per centre.

    Found by vesin's cell lists, except for non-periodic structures of at most :data:`ALL_PAIRS_MAX_ATOMS` atoms
    (the molecules of SPICE, ANI-1x, QM7-X, QCML…), whose pairs come from all N² distances: the same graph
    (tested against vesin) at a fraction of vesin's fixed cost per call.

    Args:
        pos: [N, 3] positions, Å.
        cell: [3, 3] lattice vectors as rows, Å (ignored along non-periodic directions).
        pbc: [3] bool periodic directions.
        cutoff: Radius, Å.
        max_neighbours: Cap per centre atom, keeping the nearest and never splitting a shell (see
            :func:`cap_neighbours`); ``None`` for no cap.

    Returns:
        ``edge_index`` [2, E] int64 (row 0 = neighbour j, row 1 = centre i), ``shift`` [E, 3] int32 cell
        shifts, ``dist`` [E] float64 distances in Å. Sorted by centre, then distance.
    """
    pos = np.ascontiguousarray(pos, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    if not pbc.any() and pos.shape[0] <= ALL_PAIRS_MAX_ATOMS:
        i, j, d = _all_pairs(pos, cutoff)
        s = np.zeros((i.shape[0], 3), dtype=np.int32)
    else:
        box = np.ascontiguousarray(cell, dtype=np.float64) if pbc.any() else np.zeros((3, 3))
        nl = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
        i, j, s, d = nl.compute(points=pos, box=box, periodic=[bool(p) for p in pbc], quantities="ijSd")
        i = i.astype(np.int64)
        j = j.astype(np.int64)
        s = s.astype(np.int32).reshape(-1, 3)
    i, j, s, d = cap_neighbours(i, j, s, np.asarray(d, dtype=np.float64), max_neighbours)
    return np.stack([j, i]), s, d


def _all_pairs(pos: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every ordered pair ``(i, j)``, ``i != j``, of a molecule closer than ``cutoff``, from all N² distances.

    The same pairs as vesin's full list without periodic images; used for small molecules, where vesin's fixed
    cost per call (~50 µs with the list's set-up, against ~10 µs here for 10 atoms) was the largest part of
    building their graphs. Above :data:`ALL_PAIRS_MAX_ATOMS` atoms the N² work outgrows it.

    Args:
        pos: [N, 3] positions, Å.
        cutoff: Radius, Å.

    Returns:
        ``i`` [E] int64 centres, ``j`` [E] int64 neighbours, ``dist`` [E] float64 distances in Å.
    """
    diff = pos[None, :, :] - pos[:, None, :]  # [N, N, 3]: pos[j] - pos[i]
    d2 = (diff * diff).sum(axis=2)
    close = d2 < cutoff * cutoff
    np.fill_diagonal(close, False)
    i, j = np.nonzero(close)
    return i.astype(np.int64), j.astype(np.int64), np.sqrt(d2[i, j])
