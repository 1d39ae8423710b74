"""Reader of MPtrj as its publishers distribute it: ``MPtrj_2022.9_full.json`` (figshare 23713842), plain or
gzip-compressed (``.json.gz``, as Matbench Discovery mirrors it).

Layout (the CHGNet authors' file; the converters of Matbench Discovery's SevenNet training read it the same way)::

    {"mp-1005792": {                                   # material id
        "mp-1005792-0-1": {                            # frame: <material>-<calculation>-<ionic step>
            "structure": {"lattice": {"matrix": [[...], [...], [...]]},          # Å, rows
                          "sites": [{"species": [{"element": "Ba", "occu": 1}], "xyz": [x, y, z], ...}, ...]},
            "uncorrected_total_energy": -41.47,         # eV, VASP total energy
            "corrected_total_energy": -41.47,           # eV, with the Materials Project's anion/+U corrections
            "energy_per_atom": ..., "ef_per_atom": ..., "e_per_atom_relaxed": ..., "ef_per_atom_relaxed": ...,
            "force": [[fx, fy, fz], ...],               # eV/Å
            "stress": [[...], [...], [...]],            # kBar, VASP sign (positive = compressive)
            "magmom": [...] or null, "bandgap": ..., "mp_id": "mp-1005792"}, ...}, ...}

Which energy is the label is the caller's explicit choice (``energy: uncorrected | corrected``; the registry
picks one). Stresses are converted to eV/Å^3 in ASE's sign convention: ``-0.1 GPa`` per kBar. The file is one
JSON object of about 11 GB: it is parsed as a stream (``ijson``), one material at a time, so memory stays bounded
by the largest material's frames whatever the file's size.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models.appio import BadInput
from models.data.readers.fields import numeric, require_units
from models.data.readers.pymatgen_json import KBAR_VASP_TO_ASE, open_stream, structure_arrays
from models.data.structure import Structure

ENERGY_KEYS = {"uncorrected": "uncorrected_total_energy", "corrected": "corrected_total_energy"}


def frame_structure(frame: Mapping[str, Any], where: str, energy_key: str, with_stress: bool = True, *,
                    forces_key: str = "force") -> Structure:
    """One MPtrj (or Alexandria trajectory) frame as a :class:`Structure` (eV, eV/Å, Å, eV/Å^3, ASE stress sign).

    Raises:
        BadInput: naming ``where`` (file and frame id) and the field.
    """
    z, pos, cell = structure_arrays(frame.get("structure"), where)
    n = z.shape[0]
    if energy_key not in frame or frame[energy_key] is None:
        raise BadInput(f"{where}: field '{energy_key}' is missing")
    energy = float(numeric(frame[energy_key], (), where, energy_key))
    forces = numeric(frame[forces_key], (n, 3), where, forces_key) if frame.get(forces_key) is not None else None
    stress = None
    if with_stress and frame.get("stress") is not None:
        stress = numeric(frame["stress"], (3, 3), where, "stress") * KBAR_VASP_TO_ASE
    return Structure(z=z, pos=pos, cell=cell, pbc=np.ones(3, dtype=bool), energy=energy, forces=forces,
                     stress=stress, origin=where)


def read_mptrj_json(path: str | Path, *, energy: str | None = None, units: Mapping[str, str] | None = None,
                    with_stress: bool = True) -> Iterator[Structure]:
    """Yield every frame of an MPtrj JSON file (plain or gzip), material by material, frame by frame.

    Args:
        path: ``MPtrj_2022.9_full.json`` or ``.json.gz``.
        energy: ``uncorrected`` (VASP's total energy) or ``corrected`` (with the Materials Project corrections).
        units: The registry's source units (MPtrj: eV, eV/Å, Å; its stress unit is fixed by the format, kBar).
        with_stress: Read the stresses.

    Raises:
        BadInput: an unknown ``energy`` choice, a file that is not MPtrj JSON, or a malformed frame (named).
    """
    import ijson

    if energy not in ENERGY_KEYS:
        raise BadInput(f"reader mptrj-json: option 'energy' must be one of {', '.join(ENERGY_KEYS)}, got {energy!r}")
    require_units("mptrj-json", "MPtrj", units)
    path = Path(path)
    key = ENERGY_KEYS[energy]
    n = 0
    with open_stream(path) as fh:
        try:
            for material, frames in ijson.kvitems(fh, "", use_float=True):
                if not isinstance(frames, dict):
                    raise BadInput(f"{path}: material {material!r} is not an object of frames")
                for frame_id, frame in frames.items():
                    if not isinstance(frame, dict):
                        raise BadInput(f"{path}: frame {frame_id!r} is not an object")
                    n += 1
                    yield frame_structure(frame, f"{path}:{frame_id}", key, with_stress)
        except ijson.JSONError as exc:
            raise BadInput(f"{path}: not MPtrj JSON after {n} frames ({exc})") from None
        except (EOFError, OSError) as exc:  # a truncated gzip download
            raise BadInput(f"{path}: cannot read after {n} frames ({exc})") from None
    if n == 0:
        raise BadInput(f"{path}: no MPtrj frames (expected {{material: {{frame: {{structure, ...}}}}}})")
