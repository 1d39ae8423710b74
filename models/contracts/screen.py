"""The screening app's contract: :class:`ScreenConfig` in (one shard), :class:`ScreenResult` out.

See :mod:`models.screen` for what the app does with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from models.contracts import OutputFile, Result, Strict, validate

#: What a screening shard ranks its top-k by (lower first; see :mod:`models.acquisition`).
Criterion = Literal["energy", "uncertainty", "lcb", "random"]


class ModelRef(Strict):
    """A model checkpoint to screen with."""

    id: int | None = None
    checkpoint: str
    sha256: str | None = None


class GeneratorSource(Strict):
    """Candidates ``start … start+count-1`` of the seeded generator (:mod:`models.candidates`)."""

    kind: Literal["generator"]
    seed: int = 0
    start: int = Field(0, ge=0)
    count: int = Field(ge=0)
    elements: list[str] = Field(default_factory=lambda: ["Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al"], min_length=1)
    min_atoms: int = Field(2, ge=1)
    max_atoms: int = Field(64, ge=1)
    max_species: int = Field(4, ge=1)
    periodic: bool = True


class StoreRef(Strict):
    """One split of a preprocessed ADIOS2 graph store."""

    root: str
    dataset: str
    split: Literal["train", "val", "test"] = "test"


class StoresSource(Strict):
    """Graphs ``start … start+count-1`` of the stores, concatenated in the order given."""

    kind: Literal["stores"]
    stores: list[StoreRef] = Field(min_length=1)
    start: int = Field(0, ge=0)
    count: int | None = Field(None, ge=0)


class FilesSource(Strict):
    """Frames ``start … start+count-1`` of ASE-readable files, concatenated in the order given."""

    kind: Literal["files"]
    files: list[str] = Field(min_length=1)
    start: int = Field(0, ge=0)
    count: int | None = Field(None, ge=0)
    format: str | None = None


Source = Annotated[GeneratorSource | StoresSource | FilesSource, Field(discriminator="kind")]


class ScreenConfig(Strict):
    """``python -m models.screen`` config (see the module docstring)."""

    models: list[ModelRef] = Field(min_length=1)
    source: Source
    head: int | None = None
    heads: list[int] | None = None
    precision: Literal["fp64", "fp32", "bf16"] = "fp32"
    device: str = "auto"
    forces: bool = True
    write_forces: bool = False
    force_method: Literal["loop", "vmap"] = "loop"
    max_atoms_per_batch: int | None = Field(None, ge=1)
    max_neighbours: int | None = Field(None, ge=1)
    top_k: int = Field(20, ge=0)
    criterion: Criterion = "energy"
    kappa: float = Field(1.0, ge=0)
    criterion_seed: int = 0
    force_spread: Literal["max", "mean", "sum"] = "max"
    exclude: list[int] = Field(default_factory=list)
    max_uncertainty: float | None = Field(None, gt=0)
    output: str
    shard: int = Field(0, ge=0)
    flush_every: int = Field(65536, ge=1)
    threads: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _checks(self) -> ScreenConfig:
        if self.max_uncertainty is not None and len(self.models) < 2:
            raise ValueError("max_uncertainty needs an ensemble (two or more models)")
        if self.write_forces and not self.forces:
            raise ValueError("write_forces needs forces: true")
        if self.criterion in ("uncertainty", "lcb") and len(self.models) < 2:
            raise ValueError(f"criterion {self.criterion!r} needs an ensemble (two or more models)")
        return self


def parse_config(raw: dict[str, Any], path: Path | str) -> ScreenConfig:
    """Validate ``raw``; the error names the file and the field."""
    return validate(ScreenConfig, raw, path)


class ScreenOutput(Result):
    """The shard's output directory (an ADIOS2 BP5 store) and its files."""

    path: str
    files: list[OutputFile]


class ScreenHit(Result):
    """One structure of the shard's local top-k, with what it takes to label it.

    Attributes:
        structure_id: The source's stable name of the structure.  index: Its position in the source.
        sid: Stable structure hash.  score: The criterion's score (lower first, :mod:`models.acquisition`).
        energy_per_atom: eV/atom.
        uncertainty: The ensemble's standard deviation of the energy per atom, eV/atom (None for one model).
        force_uncertainty: The ensemble's force disagreement of the structure (``force_spread`` of its atoms'),
            eV/Å (None: one model or no forces).
        head: The criterion head.  energies: ``{head_id: total energy, eV}``.
        formula: Hill formula.  natoms: Atom count.  numbers: [N] atomic numbers.  positions: [N, 3] Å.
        cell: [3, 3] Å.  pbc: [3].  forces: [N, 3] eV/Å when computed.
    """

    structure_id: str
    index: int
    sid: int
    score: float
    energy_per_atom: float
    uncertainty: float | None
    force_uncertainty: float | None = None
    head: int
    energies: dict[str, float]
    formula: str
    natoms: int
    numbers: list[int]
    positions: list[list[float]]
    cell: list[list[float]]
    pbc: list[bool]
    forces: list[list[float]] | None = None


class ScreenResult(Result):
    """What ``python -m models.screen`` returns for one shard (throughputs in structures/s)."""

    status: Literal["ok"] = "ok"
    shard: int
    structures: int
    atoms: int
    passed: int
    batches: int
    max_atoms_per_batch: int
    seconds: float
    model_seconds: float
    structures_per_s: float | None
    model_structures_per_s: float | None
    device: str
    threads: int
    precision: Literal["fp64", "fp32", "bf16"]
    heads: list[int]
    head: int
    criterion: Criterion = "energy"
    excluded: int = 0
    models: list[int | None]
    top: list[ScreenHit]
    output: ScreenOutput


def read_result(raw: Any, where: str) -> ScreenResult:
    """A finished shard's result as :class:`ScreenResult` (:class:`BadInput` naming ``where`` if it is not one)."""
    return validate(ScreenResult, raw, where)
