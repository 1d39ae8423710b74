"""Reader of the ANI-1x / Transition1x HDF5 layout.

Every HDF5 group holding an ``atomic_numbers`` dataset is one chemical formula (ANI-1x: top-level groups;
Transition1x: ``data/<formula>/<reaction>`` and its ``reactant``, ``product`` and ``transition_state`` subgroups —
only ``data`` is read: the ``train``/``val``/``test`` groups name the same reactions again) with, for ``C``
conformers of ``N`` atoms:

* ``atomic_numbers`` [N] int,
* ``coordinates`` (ANI-1x) or ``positions`` (Transition1x) [C, N, 3] float, Å,
* ``<method>.energy`` [C] and optionally ``<method>.forces`` [C, N, 3], one pair per level of theory
  (``wb97x_dz``, ``ccsd(t)_cbs``, ``wB97x_6-31G(d)`` …). One file thus yields several fidelities: call the
  reader once per ``method``. Conformers whose energy is NaN at that level (ANI-1x stores NaN where no
  CCSD(T) energy was computed) are yielded with ``energy=None`` so preprocessing counts them as unlabelled.

ANI-1x stores Hartree and Hartree/Å; Transition1x eV and eV/Å. The registry's ``units`` say which.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import h5py
import numpy as np

from models.appio import BadInput
from models.data.structure import Structure
from models.data.units import energy_factor, force_factor, length_factor

_POS_KEYS = ("coordinates", "positions")


def _formula_groups(h5: h5py.File) -> list[h5py.Group]:
    """Every group holding ``atomic_numbers``, under ``data`` when the file has one (Transition1x: its ``train``,
    ``val`` and ``test`` groups name the same reactions again), else anywhere."""
    groups: list[h5py.Group] = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Group) and "atomic_numbers" in obj:
            groups.append(obj)

    root = h5["data"] if isinstance(h5.get("data"), h5py.Group) else h5
    root.visititems(visit)
    return groups


def read_ani_hdf5(
    path: str | Path, *, method: str, units: Mapping[str, str] | None = None, with_forces: bool = True
) -> Iterator[Structure]:
    """Yield every conformer of an ANI-layout HDF5 file at level of theory ``method``.

    Args:
        path: The ``.h5`` file.
        method: Dataset prefix of the level of theory, e.g. ``"wb97x_dz"`` (reads ``wb97x_dz.energy``).
        units: Source units (registry ``units``).
        with_forces: Read ``<method>.forces`` when present.

    Raises:
        BadInput: Not an HDF5 file, no formula groups, a group missing atomic numbers/positions, mismatched
            shapes, NaN positions, or no group holding ``<method>.energy`` at all.
    """
    path = Path(path)
    u = {"energy": "eV", "forces": "eV/Å", "length": "Å", **(units or {})}
    ef, ff, lf = energy_factor(u["energy"]), force_factor(u["forces"]), length_factor(u["length"])
    ekey, fkey = f"{method}.energy", f"{method}.forces"
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise BadInput(f"{path}: cannot open as HDF5 ({exc})") from exc
    with h5:
        groups = _formula_groups(h5)
        if not groups:
            raise BadInput(f"{path}: no group holds an 'atomic_numbers' dataset (not the ANI layout)")
        if not any(ekey in g for g in groups):
            raise BadInput(f"{path}: no energies: no group holds {ekey!r}")
        for g in groups:
            where = f"{path}:{g.name}"
            pkey = next((k for k in _POS_KEYS if k in g), None)
            if pkey is None:
                raise BadInput(f"{where}: missing field 'coordinates' (or 'positions')")
            z = np.asarray(g["atomic_numbers"][()], dtype=np.int64).reshape(-1)
            pos = np.asarray(g[pkey][()], dtype=np.float64) * lf
            if pos.ndim != 3 or pos.shape[1:] != (z.shape[0], 3):
                raise BadInput(
                    f"{where}: field {pkey!r} has shape {pos.shape}, expected (C, {z.shape[0]}, 3)"
                )
            nconf = pos.shape[0]
            if ekey in g:
                energy = np.asarray(g[ekey][()], dtype=np.float64).reshape(-1) * ef
                if energy.shape[0] != nconf:
                    raise BadInput(
                        f"{where}: field {ekey!r} has {energy.shape[0]} values for {nconf} conformers"
                    )
            else:
                energy = np.full(nconf, np.nan)
            forces = None
            if with_forces and fkey in g:
                forces = np.asarray(g[fkey][()], dtype=np.float64) * ff
                if forces.shape != pos.shape:
                    raise BadInput(f"{where}: field {fkey!r} has shape {forces.shape}, expected {pos.shape}")
            for c in range(nconf):
                if not np.isfinite(pos[c]).all():
                    raise BadInput(f"{where}: conformer {c}: field {pkey!r} holds NaN/Inf")
                e = energy[c]
                f = forces[c] if forces is not None else None
                if f is not None and np.isnan(f).all():
                    f = None
                yield Structure(
                    z=z.copy(),
                    pos=pos[c].copy(),
                    cell=np.zeros((3, 3)),
                    pbc=np.zeros(3, dtype=bool),
                    energy=None if np.isnan(e) else float(e),
                    forces=None if f is None else f.copy(),
                    origin=f"{where}[{c}]",
                )
