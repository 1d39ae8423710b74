"""The labelling app's contract: :class:`LabelConfig` in, :class:`LabelResult` out.

See :mod:`models.label` for what the app does with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from models.contracts import OutputFile, Result, Strict, validate
from models.contracts.screen import GeneratorSource

#: Labelling methods: ASE's EMT (metals), GFN2-/GFN1-xTB through tblite, restricted Kohn-Sham DFT through PySCF.
Method = Literal["emt", "gfn2-xtb", "gfn1-xtb", "dft"]
#: Level of theory recorded with a label of each method.
LEVEL_OF_THEORY: dict[str, str] = {"emt": "EMT (ASE)", "gfn2-xtb": "GFN2-xTB (tblite)",
                                   "gfn1-xtb": "GFN1-xTB (tblite)", "dft": "B3LYP/6-31G* (PySCF)"}


class LabelConfig(Strict):
    """``python -m models.label`` config: label candidates ``indices`` of ``source`` with ``method``.

    ``max_force``: a label with an atomic force above it (eV/Å) is recorded as failed (``unphysical``) and kept
    out of the output: a candidate with overlapping atoms, say, is not training data.
    """

    source: GeneratorSource
    indices: list[int] = Field(min_length=1)
    method: Method
    output: str
    max_force: float = Field(50.0, gt=0)


def parse_config(raw: dict[str, Any], path: Path | str) -> LabelConfig:
    """Validate ``raw``; the error names the file and the field."""
    return validate(LabelConfig, raw, path)


class Label(Result):
    """The outcome of one structure's labelling.

    Attributes:
        index: Position in the source.  structure_id: The source's name of it.  sid: Stable structure hash.
        formula: Hill formula.  natoms: Atom count.  status: ``ok`` or ``failed``.
        cause: Why it failed (``unsupported-element``, ``not-converged``, ``non-finite``, ``unphysical``,
            ``error``), None when ok.  message: The failure's message.
        energy: Total energy, eV (None when failed).  max_force: Largest atomic force, eV/Å.
        seconds: Wall time of the calculation.
    """

    index: int
    structure_id: str
    sid: int
    formula: str
    natoms: int
    status: Literal["ok", "failed"]
    cause: str | None = None
    message: str | None = None
    energy: float | None = None
    max_force: float | None = None
    seconds: float


class LabelResult(Result):
    """What ``python -m models.label`` returns: every requested structure's outcome, and the extxyz of the
    labelled ones (energy, forces, stress for periodic cells under EMT; ``info``: index, structure_id, sid)."""

    status: Literal["ok"] = "ok"
    method: Method
    level_of_theory: str
    labels: list[Label]
    labelled: int
    failed: int
    output: OutputFile | None
    wall_time_s: float


def read_result(raw: Any, where: str) -> LabelResult:
    """A finished labelling task's result (:class:`BadInput` naming ``where`` if it is not one)."""
    return validate(LabelResult, raw, where)
