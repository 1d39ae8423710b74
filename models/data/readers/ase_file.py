"""Reader of any ASE-readable file: extxyz (MPtrj / Alexandria exports), ASE SQLite ``.db`` (∇²DFT), …"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from models.appio import BadInput
from models.data.readers.atoms import atoms_to_structure
from models.data.readers.extxyz import is_extxyz_name, read_extxyz
from models.data.structure import Structure


def read_ase(
    path: str | Path,
    *,
    units: Mapping[str, str] | None = None,
    format: str | None = None,
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
) -> Iterator[Structure]:
    """Yield every structure of an ASE-readable file.

    Extended XYZ (by name or ``format='extxyz'``, without label keys) is streamed by
    :func:`models.data.readers.extxyz.read_extxyz`, which gives ASE's result frame by frame without building
    an ``Atoms`` for the frames the common writers produce.

    Args:
        path: The file (``.extxyz``/``.xyz``, ``.db``, ``.traj``, …).
        units: Source units (registry ``units``); labels are converted to eV, eV/Å, eV/Å^3.
        format: ASE format name; guessed from the name when ``None``.
        energy_key: ``info``/row-data key of the energy (default: the calculator's energy).
        forces_key: ``arrays``/row-data key of the forces (default: the calculator's forces).
        stress_key: ``info``/row-data key of the stress (default: the calculator's stress).

    Raises:
        BadInput: Unreadable file, or a record without energy / with NaN positions (names file and record).
    """
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path}: no such file")
    fmt = format or ("db" if path.suffix == ".db" else None)
    opts: dict[str, Any] = {"units": units, "energy_key": energy_key, "forces_key": forces_key, "stress_key": stress_key}
    if fmt == "db":
        import ase.db

        try:
            db = ase.db.connect(str(path), type="db")
            rows = list(db.select())
        except Exception as exc:
            raise BadInput(f"{path}: cannot read ASE database ({exc})") from exc
        for row in rows:
            atoms = row.toatoms(add_additional_information=True)
            yield atoms_to_structure(atoms, f"{path}:id={row.id}", **opts)
        return
    if fmt in (None, "extxyz") and (fmt or is_extxyz_name(path)) and not (energy_key or forces_key or stress_key):
        yield from read_extxyz(path, units=units)
        return
    import ase.io

    try:
        frames = ase.io.iread(str(path), index=":", format=fmt)
        for k, atoms in enumerate(frames):
            yield atoms_to_structure(atoms, f"{path}:record {k}", **opts)
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc
