"""What the readers of published pymatgen-style JSON share (MPtrj, Alexandria): opening a file that may be
compressed as its publisher distributes it, and a pymatgen ``Structure.as_dict()`` as arrays, without pymatgen.

A structure dict holds ``lattice.matrix`` (3 rows, Å) and ``sites``, each with ``species`` (``[{"element",
"occu"}]``: the first element is taken; the published datasets have ordered sites) and ``xyz`` (Cartesian, Å).
Stresses in these files are VASP's: kBar, positive = compressive; :data:`KBAR_VASP_TO_ASE` converts them to
eV/Å^3 in ASE's sign convention.
"""

from __future__ import annotations

import bz2
import gzip
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
from ase.data import atomic_numbers

from models.appio import BadInput
from models.data.readers.fields import numeric

#: eV/Å^3 per GPa (1 eV/Å^3 = 160.21766 GPa).
EV_PER_A3_PER_GPA = 1.0 / 160.21766208
#: VASP stress (kBar, positive = compressive) -> eV/Å^3 in ASE's convention (positive = tensile).
KBAR_VASP_TO_ASE = -0.1 * EV_PER_A3_PER_GPA


def open_stream(path: Path) -> IO[bytes]:
    """``path`` opened for reading bytes: plain, gzip (``\\x1f\\x8b``) or bzip2 (``BZh``) by its first bytes."""
    with open(path, "rb") as fh:
        magic = fh.read(3)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(path, "rb")  # type: ignore[return-value]
    if magic == b"BZh":
        return bz2.BZ2File(path, "rb")
    return open(path, "rb")


def structure_arrays(struct: Any, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(z [N] int64, pos [N, 3] Å, cell [3, 3] Å)`` of a pymatgen structure dict.

    Raises:
        BadInput: naming ``where`` and the field when the dict has no lattice or sites, or a site no element.
    """
    if not isinstance(struct, Mapping) or "sites" not in struct or "lattice" not in struct:
        raise BadInput(f"{where}: field 'structure' is missing or has no lattice/sites")
    sites = struct["sites"]
    if not isinstance(sites, list) or not sites:
        raise BadInput(f"{where}: field 'structure.sites' is empty")
    z = []
    for k, site in enumerate(sites):
        try:
            z.append(atomic_numbers[site["species"][0]["element"]])
        except (KeyError, IndexError, TypeError):
            raise BadInput(f"{where}: field 'structure.sites[{k}].species' names no known element") from None
    n = len(z)
    pos = numeric([site.get("xyz") for site in sites], (n, 3), where, "structure.sites[].xyz")
    lattice = struct["lattice"]
    cell = numeric(lattice.get("matrix") if isinstance(lattice, Mapping) else None, (3, 3), where,
                 "structure.lattice.matrix")
    return np.asarray(z, dtype=np.int64), pos, cell
