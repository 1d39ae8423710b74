"""Labelling app: ``python -m models.label --config label.json --result result.json``.

Computes reference labels (total energy, forces; stress for periodic cells under EMT) for chosen candidates of
the seeded generator (:mod:`models.candidates`), with a real physics code:

* ``emt``: ASE's effective-medium theory (the elements it has parameters for: Cu, Ag, Au, Ni, Pd, Pt, Al and H, C,
  N, O; others are ``unsupported-element``);
* ``gfn2-xtb`` / ``gfn1-xtb``: tblite's extended tight binding (an SCF that does not converge is
  ``not-converged``);
* ``dft``: restricted Kohn-Sham B3LYP/6-31G* through PySCF (the ``[dft]`` extra), molecules only.

Every requested structure gets an outcome (:class:`models.contracts.label.Label`): a failure is recorded with its
cause and message, never dropped; a label with a non-finite value is ``non-finite``, one with an atomic force
above ``max_force`` is ``unphysical``. The labelled structures are written to ``output`` (extxyz, atomically: a
killed run leaves no partial file) in the order requested, each with ``info`` ``index``, ``structure_id`` and
``sid``. Structure ``k`` depends only on the source's fields and ``k``, so a re-run labels the same geometries.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.appio import BadInput, main_for
from models.atomic_files import atomic_path, sha256_file
from models.candidates import CandidateSpec, candidate
from models.contracts.label import LEVEL_OF_THEORY, LabelConfig, LabelResult, parse_config
from models.data.split import structure_id


class LabelFailed(Exception):
    """A structure the method could not label; ``cause`` is the recorded reason."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


def _calculate(atoms: Any, method: str) -> dict[str, Any]:
    """Energy (eV), forces (eV/Å) and, for periodic EMT cells, stress (eV/Å³, Voigt) of ``atoms``."""
    if method == "emt":
        from ase.calculators.emt import EMT, parameters

        odd = sorted(set(atoms.get_chemical_symbols()) - set(parameters))  # the elements EMT has parameters for
        if odd:
            raise LabelFailed("unsupported-element", f"EMT has no parameters for {', '.join(odd)}")
        atoms.calc = EMT()
        out = {"energy": float(atoms.get_potential_energy()), "forces": atoms.get_forces().copy()}
        if atoms.pbc.all():
            out["stress"] = atoms.get_stress(voigt=True).copy()
        return out
    if method == "dft":
        from models.data.demo import dft_label

        if atoms.pbc.any():
            raise LabelFailed("unsupported-structure", "the DFT labeller handles molecules only (no periodic cells)")
        try:
            dft_label(atoms)
        except RuntimeError as exc:
            raise LabelFailed("not-converged", str(exc)) from exc
        return {"energy": float(atoms.get_potential_energy()), "forces": atoms.get_forces().copy()}
    from models.data.demo import xtb_calculator

    atoms.calc = xtb_calculator("GFN2-xTB" if method == "gfn2-xtb" else "GFN1-xTB")
    try:
        return {"energy": float(atoms.get_potential_energy()), "forces": atoms.get_forces().copy()}
    except Exception as exc:  # tblite raises its own error types (SCF not converged, bad input)
        text = str(exc)
        raise LabelFailed("not-converged" if "converge" in text.lower() else "error", text[:500]) from exc


def label(cfg: LabelConfig) -> dict[str, Any]:
    """Label as configured; returns the result dict (:class:`models.contracts.label.LabelResult`).

    Raises:
        BadInput: an unusable source (unknown elements, bad atom counts).
    """
    from ase.calculators.singlepoint import SinglePointCalculator

    t0 = time.perf_counter()
    src = cfg.source
    try:
        spec = CandidateSpec(elements=tuple(src.elements), min_atoms=src.min_atoms, max_atoms=src.max_atoms,
                             max_species=src.max_species, periodic=src.periodic)
    except ValueError as exc:
        raise BadInput(f"field 'source': {exc}") from exc
    labels, frames = [], []
    for index in cfg.indices:
        atoms = candidate(src.seed, index, spec)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        cell = np.asarray(atoms.cell[:], dtype=np.float64) if pbc.any() else np.zeros((3, 3))
        sid = structure_id(atoms.numbers, atoms.positions, cell, pbc)
        row: dict[str, Any] = {"index": index, "structure_id": f"gen-{src.seed}-{index}", "sid": sid,
                               "formula": atoms.get_chemical_formula(mode="hill"), "natoms": len(atoms)}
        t1 = time.perf_counter()
        try:
            res = _calculate(atoms, cfg.method)
            fmax = float(np.linalg.norm(res["forces"], axis=1).max()) if len(atoms) else 0.0
            if not (math.isfinite(res["energy"]) and np.isfinite(res["forces"]).all()):
                raise LabelFailed("non-finite", "the method returned a non-finite energy or force")
            if fmax > cfg.max_force:
                raise LabelFailed("unphysical", f"largest force {fmax:.4g} eV/Å is above max_force {cfg.max_force}")
        except LabelFailed as exc:
            labels.append({**row, "status": "failed", "cause": exc.cause, "message": str(exc),
                           "seconds": time.perf_counter() - t1})
            continue
        atoms.calc = SinglePointCalculator(atoms, **res)
        atoms.info.update({"index": index, "structure_id": row["structure_id"], "sid": sid})
        frames.append(atoms)
        labels.append({**row, "status": "ok", "energy": res["energy"], "max_force": fmax,
                       "seconds": time.perf_counter() - t1})
    output = None
    if frames:
        import ase.io

        with atomic_path(cfg.output) as tmp:
            ase.io.write(tmp, frames, format="extxyz")
        out = Path(cfg.output)
        output = {"path": str(out), "sha256": sha256_file(out), "bytes": out.stat().st_size}
    ok = sum(lab["status"] == "ok" for lab in labels)
    return LabelResult.model_validate({
        "method": cfg.method, "level_of_theory": LEVEL_OF_THEORY[cfg.method], "labels": labels, "labelled": ok,
        "failed": len(labels) - ok, "output": output, "wall_time_s": time.perf_counter() - t0,
    }).model_dump(mode="json")


def app(raw: dict[str, Any], config_path: Path) -> dict[str, Any]:
    """``main_for`` entry: a relative output resolves against the config's directory."""
    cfg = parse_config(raw, config_path)
    if not Path(cfg.output).is_absolute():
        cfg.output = str(config_path.parent / cfg.output)
    try:
        return label(cfg)
    except BadInput as exc:
        raise BadInput(f"{config_path}: {exc}") from None


if __name__ == "__main__":
    main_for(app, "Label candidate structures with a physics code (EMT, GFN-xTB, DFT).")
