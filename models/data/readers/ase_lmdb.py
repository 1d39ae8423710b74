"""Reader of the ASE-LMDB layout used by OMat24, OMol25, OC20/OC22/OC25, ODAC23 (``*.aselmdb`` files).

Backed by the ``ase-db-backends`` package (``ase.db.connect(path, type="aselmdb")``), the layout fairchem's
``AseDBDataset`` reads. Charge and spin (OMol25) are taken from ``atoms.info`` / the row data when present.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from models.appio import BadInput
from models.data.readers.atoms import atoms_to_structure
from models.data.structure import Structure


def read_ase_lmdb(
    path: str | Path,
    *,
    units: Mapping[str, str] | None = None,
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
) -> Iterator[Structure]:
    """Yield every structure of one ``.aselmdb`` file, in row-id order.

    Raises:
        BadInput: Missing file, a file that is not an ASE-LMDB database, or a bad record (names the row id).
    """
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path}: no such file")
    try:
        import ase.db

        db = ase.db.connect(str(path), type="aselmdb", readonly=True, use_lock_file=False)
        ids = list(db.ids) if hasattr(db, "ids") else [row.id for row in db.select()]
    except ImportError as exc:
        raise BadInput(f"{path}: reading ASE-LMDB needs the 'ase-db-backends' package ({exc})") from exc
    except Exception as exc:
        raise BadInput(f"{path}: cannot open as ASE-LMDB ({type(exc).__name__}: {exc})") from exc
    opts: dict[str, Any] = {"units": units, "energy_key": energy_key, "forces_key": forces_key, "stress_key": stress_key}
    try:
        for rid in ids:
            row = db._get_row(rid) if hasattr(db, "_get_row") else db.get(id=rid)
            atoms = row.toatoms(add_additional_information=True)
            yield atoms_to_structure(atoms, f"{path}:id={rid}", **opts)
    finally:
        close = getattr(db, "close", None)
        if close is not None:
            close()
