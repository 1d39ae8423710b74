"""Reader of QM7-X as its publishers distribute it (Zenodo record 4288677: ``1000.xz`` … ``8000.xz``, each an
xz-compressed HDF5 file ``1000.hdf5`` … ``8000.hdf5``; J. Hoja et al., Sci. Data 8, 43 (2021), and the example
reader shipped with the record).

Layout: one top-level group per molecule (its id, ``"1"``, ``"2"``, …), holding one group per geometry, named
``Geom-m<mol>-i<isomer>-c<conformer>-opt`` (the equilibrium structure) or ``…-c<conformer>-d<displacement>``
(non-equilibrium ones). A geometry of ``N`` atoms holds, among ~40 properties:

* ``atNUM`` [N] atomic numbers; ``atXYZ`` [N, 3] positions, **Å**;
* ``ePBE0+MBD`` [1] total energy at PBE0+MBD, **eV** (``eAT`` [1] the atomisation energy, ``ePBE0``, ``eMBD``,
  ``eDFTB+MBD`` other energies, eV);
* ``totFOR`` [N, 3] total PBE0+MBD forces, **eV/Å** (``pbe0FOR``, ``vdwFOR`` their parts).

Options: ``energy`` (default ``ePBE0+MBD``) and ``forces`` (default ``totFOR``) name the fields read. The files
are published xz-compressed; HDF5 needs random access, so a ``.xz`` file is refused with the command that
decompresses it (once, ~6 GB each) rather than inflated silently. Geometries are read one molecule group at a
time (bounded memory); a malformed geometry is named with its group path.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from models.appio import BadInput
from models.data.structure import Structure
from models.data.units import energy_factor, force_factor, length_factor

#: The first bytes of an xz stream.
XZ_MAGIC = b"\xfd7zXZ\x00"


def read_qm7x_hdf5(path: str | Path, *, units: Mapping[str, str] | None = None, energy: str = "ePBE0+MBD",
                   forces: str = "totFOR", with_forces: bool = True) -> Iterator[Structure]:
    """Yield every geometry of a QM7-X HDF5 file, molecule by molecule.

    Raises:
        BadInput: an xz-compressed file, not an HDF5 file, no QM7-X geometry, or a geometry with a missing or
            mis-shaped field (named by its group path).
    """
    import h5py

    path = Path(path)
    with path.open("rb") as fh:
        if fh.read(len(XZ_MAGIC)) == XZ_MAGIC:
            raise BadInput(f"{path}: xz-compressed, as QM7-X is published; HDF5 needs the file itself: run "
                           f"`xz -dk {path}` (or `unxz`) once and point the dataset at the .hdf5 file it writes")
    u = {"energy": "eV", "forces": "eV/Å", "length": "Å", **(units or {})}
    ef, ff, lf = energy_factor(u["energy"]), force_factor(u["forces"]), length_factor(u["length"])
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise BadInput(f"{path}: not an HDF5 file ({exc})") from exc
    n_geometries = 0
    with h5:
        for mol in h5:
            group = h5[mol]
            if not isinstance(group, h5py.Group):
                continue
            for geom in group:
                conf = group[geom]
                if not isinstance(conf, h5py.Group) or "atNUM" not in conf:
                    continue
                where = f"{path}:{mol}/{geom}"
                for field in ("atXYZ", energy):
                    if field not in conf:
                        raise BadInput(f"{where}: field '{field}' is missing")
                z = np.asarray(conf["atNUM"][()], dtype=np.int64).reshape(-1)
                pos = np.asarray(conf["atXYZ"][()], dtype=np.float64) * lf
                e = np.asarray(conf[energy][()], dtype=np.float64).reshape(-1)
                if pos.shape != (z.shape[0], 3):
                    raise BadInput(f"{where}: field 'atXYZ' has shape {pos.shape}, expected ({z.shape[0]}, 3)")
                if e.shape != (1,):
                    raise BadInput(f"{where}: field '{energy}' has shape {e.shape}, expected one value")
                f = None
                if with_forces and forces in conf:
                    f = np.asarray(conf[forces][()], dtype=np.float64) * ff
                    if f.shape != pos.shape:
                        raise BadInput(f"{where}: field '{forces}' has shape {f.shape}, expected {pos.shape}")
                n_geometries += 1
                yield Structure(z=z, pos=pos, cell=np.zeros((3, 3)), pbc=np.zeros(3, dtype=bool),
                                energy=float(e[0] * ef), forces=f, origin=where)
    if n_geometries == 0:
        raise BadInput(f"{path}: no QM7-X geometries (groups <molecule>/<Geom-…> with atNUM, atXYZ, {energy})")
