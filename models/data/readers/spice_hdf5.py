"""Reader of SPICE as its publishers distribute it: ``SPICE-<version>.hdf5`` (Zenodo; written by
``downloader/downloader.py`` of openmm/spice-dataset).

One top-level group per molecule (its name), holding, for ``C`` conformations of ``N`` atoms:

* ``atomic_numbers`` [N] int16; ``smiles`` [1] and ``subset`` [1] strings (the SMILES is atom-mapped, with
  explicit hydrogens and formal charges: the molecule's total charge is their sum);
* ``conformations`` [C, N, 3] float32, **bohr**;
* ``dft_total_energy`` [C] float64, **hartree** (ωB97M-D3BJ/def2-TZVPPD); ``formation_energy`` [C] (the total
  minus isolated-atom energies, hartree);
* ``dft_total_gradient`` [C, N, 3] float32, **hartree/bohr** — a gradient: forces are its negative;
* optional extras (``mbis_charges``, ``scf_dipole`` …) that this reader does not use.

The registry's ``units`` say hartree, hartree/bohr and bohr; structures come out in eV, eV/Å and Å. A group
without ``dft_total_energy`` is skipped (the published file has one in every group); a malformed group is named.
Groups are read one at a time (bounded memory).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from models.appio import BadInput
from models.data.structure import Structure
from models.data.units import energy_factor, force_factor, length_factor

_BRACKET = re.compile(r"\[([^\]]+)\]")
_CHARGE = re.compile(r"([+-]+)(\d*)$")


def smiles_charge(smiles: str) -> int:
    """Total formal charge of a (mapped) SMILES: the sum of its bracket atoms' charges (``[N+:3]``, ``[O-:5]``,
    ``[Ca+2:1]``)."""
    total = 0
    for inside in _BRACKET.findall(smiles):
        match = _CHARGE.search(inside.split(":", 1)[0])
        if match:
            signs, digits = match.groups()
            value = int(digits) if digits else len(signs)
            total += value if signs[0] == "+" else -value
    return total


def read_spice_hdf5(path: str | Path, *, units: Mapping[str, str] | None = None,
                    with_forces: bool = True) -> Iterator[Structure]:
    """Yield every conformation of a SPICE HDF5 file, group by group.

    Raises:
        BadInput: not an HDF5 file, no molecule groups, or a group with missing or mis-shaped fields (named).
    """
    import h5py

    path = Path(path)
    u = {"energy": "Hartree", "forces": "Hartree/Bohr", "length": "Bohr", **(units or {})}
    ef, ff, lf = energy_factor(u["energy"]), force_factor(u["forces"]), length_factor(u["length"])
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise BadInput(f"{path}: not an HDF5 file ({exc})") from exc
    n_groups = 0
    with h5:
        for name in h5:
            group = h5[name]
            if not isinstance(group, h5py.Group) or "atomic_numbers" not in group:
                continue
            n_groups += 1
            where = f"{path}:{name}"
            if "dft_total_energy" not in group:
                continue
            for field in ("conformations",):
                if field not in group:
                    raise BadInput(f"{where}: field '{field}' is missing")
            z = np.asarray(group["atomic_numbers"][()], dtype=np.int64)
            pos = np.asarray(group["conformations"][()], dtype=np.float64) * lf
            energy = np.asarray(group["dft_total_energy"][()], dtype=np.float64) * ef
            n = z.shape[0]
            if pos.ndim != 3 or pos.shape[1:] != (n, 3) or energy.shape != (pos.shape[0],):
                raise BadInput(f"{where}: conformations {pos.shape} / dft_total_energy {energy.shape} do not match "
                               f"{n} atoms")
            forces = None
            if with_forces and "dft_total_gradient" in group:
                forces = -np.asarray(group["dft_total_gradient"][()], dtype=np.float64) * ff
                if forces.shape != pos.shape:
                    raise BadInput(f"{where}: field 'dft_total_gradient' has shape {forces.shape}, expected "
                                   f"{pos.shape}")
            charge = 0
            if "smiles" in group:
                raw = group["smiles"][0]
                charge = smiles_charge(raw.decode() if isinstance(raw, bytes) else str(raw))
            for c in range(pos.shape[0]):
                yield Structure(z=z, pos=pos[c], cell=np.zeros((3, 3)), pbc=np.zeros(3, dtype=bool),
                                energy=float(energy[c]), forces=None if forces is None else forces[c],
                                charge=charge, origin=f"{where}:{c}")
    if n_groups == 0:
        raise BadInput(f"{path}: no SPICE molecule groups (groups with atomic_numbers, conformations, "
                       "dft_total_energy)")
