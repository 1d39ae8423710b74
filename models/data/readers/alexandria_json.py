"""Reader of Alexandria's geometry-optimisation paths as published (alexandria.icams.rub.de, PBE 3D: one
``*.json.bz2`` file per chunk of materials; J. Schmidt et al., Mater. Today Phys. 48, 101560 (2024)).

Layout (as the MACE-MP and ColabFit converters of the published files read it)::

    {"agm002153473": [                                  # Alexandria id
        {"kpoints": [7, 2, 2], "PREC": "high", "ENMAX": 264.4, ...,   # one VASP calculation of the relaxation
         "steps": [                                     # its ionic steps
            {"structure": {"lattice": {"matrix": ...}, "sites": [...]},   # pymatgen Structure.as_dict(), Å
             "energy": -41.47,                          # eV, VASP total energy (no Materials-Project-style
                                                        #   correction exists per step)
             "forces": [[fx, fy, fz], ...],             # eV/Å
             "stress": [[...], [...], [...]]},          # kBar, VASP sign (positive = compressive)
            ...]},
        ...], ...}

Energy: the steps carry only VASP's uncorrected total energy; the option ``energy`` must say so
(``uncorrected``), so that a corrected label is never assumed. Stresses become eV/Å^3 in ASE's sign. A file of
the other Alexandria download, the relaxed ``ComputedStructureEntry`` list (``{"entries": [...]}``, energies
without forces), is refused with that explanation. The file is parsed as a stream (``ijson``) from its bzip2
(or gzip, or plain) bytes, one material at a time: memory is bounded by the largest material's relaxation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from models.appio import BadInput
from models.data.readers.fields import require_units
from models.data.readers.mptrj_json import frame_structure
from models.data.readers.pymatgen_json import open_stream
from models.data.structure import Structure

ENERGY_CHOICES = ("uncorrected",)


def read_alexandria_json(path: str | Path, *, energy: str | None = None, units: Mapping[str, str] | None = None,
                         with_stress: bool = True) -> Iterator[Structure]:
    """Yield every ionic step of every calculation of every material of an Alexandria trajectory file.

    Args:
        path: A published ``*.json.bz2`` (or an uncompressed / gzip copy).
        energy: ``uncorrected`` (the only energy the steps carry; said explicitly).
        units: The registry's source units (eV, eV/Å, Å; the stress unit is fixed by the format, kBar).
        with_stress: Read the stresses.

    Raises:
        BadInput: another ``energy``, a file that is not Alexandria trajectory JSON (the relaxed-entries file
            named as such), or a malformed step (named by material, calculation and step).
    """
    import ijson

    if energy not in ENERGY_CHOICES:
        raise BadInput(f"reader alexandria-json: option 'energy' must be 'uncorrected' (the steps carry VASP's "
                       f"total energy only), got {energy!r}")
    require_units("alexandria-json", "Alexandria", units)
    path = Path(path)
    n = 0
    with open_stream(path) as fh:
        try:
            for material, calcs in ijson.kvitems(fh, "", use_float=True):
                if material == "entries" or material.startswith("@"):  # pymatgen's "@module", "@class"
                    raise BadInput(f"{path}: this is Alexandria's relaxed-entries file (ComputedStructureEntry "
                                   "list: energies, no forces); the dataset is the geometry-optimisation paths "
                                   "({id: [{steps: [...]}]})")
                if not isinstance(calcs, list):
                    raise BadInput(f"{path}: material {material!r} is not a list of calculations")
                for c, calc in enumerate(calcs):
                    steps = calc.get("steps") if isinstance(calc, dict) else None
                    if not isinstance(steps, list):
                        raise BadInput(f"{path}:{material}/{c}: field 'steps' is missing")
                    for k, step in enumerate(steps):
                        if not isinstance(step, dict):
                            raise BadInput(f"{path}:{material}/{c}/{k}: not an object")
                        n += 1
                        yield frame_structure(step, f"{path}:{material}/{c}/{k}", "energy", with_stress,
                                              forces_key="forces")
        except ijson.JSONError as exc:
            raise BadInput(f"{path}: not Alexandria trajectory JSON after {n} steps ({exc})") from None
        except (EOFError, OSError) as exc:  # a truncated bz2/gzip download
            raise BadInput(f"{path}: cannot read after {n} steps ({exc})") from None
    if n == 0:
        raise BadInput(f"{path}: no Alexandria steps (expected {{id: [{{steps: [{{structure, energy, forces, "
                       "stress}}]}}]}})")
