"""The preprocessing app's contract: :class:`PreprocessConfig` (or :class:`MergeConfig`) in,
:class:`PreprocessSummary` out.

See :mod:`models.preprocess` for what the app does with it. Lengths in Å, forces in eV/Å, energies in eV.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from models.contracts import OutputFile, Result, Strict, validate


class Filters(Strict):
    """Outlier thresholds (every rejected structure is counted under its reason).

    Attributes:
        max_force: Reject structures with any |F| above this, eV/Å (``None`` disables).
        min_distance: Reject structures with two atoms closer than this, Å (``None`` disables). Must be below
            the graph cutoff (the check uses the neighbour list).
        deduplicate: Reject a structure whose stable id was already seen in this dataset.
    """

    max_force: float | None = Field(50.0, gt=0)
    min_distance: float | None = Field(0.5, gt=0)
    deduplicate: bool = True


class DatasetInput(Strict):
    """One dataset to preprocess: its registry name and input files (relative to the config's directory)."""

    name: str
    inputs: list[str] = Field(min_length=1)
    reader: str | None = Field(None, description="Reader name (default: the registry's).")
    reader_options: dict[str, Any] = Field(default_factory=dict)


class Part(Strict):
    """Part ``index`` of ``count``: the structures whose stable id is ``index mod count``."""

    index: int = Field(ge=0, strict=True)
    count: int = Field(ge=1, strict=True)

    @model_validator(mode="after")
    def _within(self) -> Part:
        if self.index >= self.count:
            raise ValueError(f"index {self.index} must be below count {self.count}")
        return self


class PreprocessConfig(Strict):
    """``python -m models.preprocess`` config (one run over one or more datasets, or one part of one).

    Attributes:
        cutoff: Radius of the graphs, Å.  max_neighbours: Nearest neighbours kept per atom (None: all).
        split: Fractions of train/val/test (assigned by hash of the structure and ``seed``).
        ridge: Ridge of the element reference-energy fit.  shard_size: Graphs per store shard.
        part: Keep only one part of the structures (parallel writers; a merge run joins them).
    """

    output_dir: str
    datasets: list[DatasetInput] = Field(min_length=1)
    cutoff: float = Field(5.0, gt=0, strict=True)
    max_neighbours: int | None = Field(None, ge=1, strict=True)
    split: dict[str, float] = Field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    seed: int = Field(0, strict=True)
    filters: Filters = Field(default_factory=Filters)
    ridge: float = Field(1e-8, ge=0)
    shard_size: int = Field(100_000, ge=1)
    part: Part | None = None

    @model_validator(mode="after")
    def _consistent(self) -> PreprocessConfig:
        if self.filters.min_distance is not None and self.filters.min_distance >= self.cutoff:
            raise ValueError("'filters.min_distance' must be below 'cutoff'")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError("'datasets' names a dataset twice")
        return self


class MergeConfig(Strict):
    """Merge run: the part directories of one sharded run into one store per split (references refitted)."""

    output_dir: str
    parts: list[str] = Field(min_length=1)
    ridge: float = Field(1e-8, ge=0)


class EnergyStats(Result):
    """Mean, standard deviation, minimum and maximum, eV (or eV/atom); empty when nothing was kept."""

    mean: float
    std: float
    min: float
    max: float


class DatasetSummary(Result):
    """One preprocessed dataset.

    Attributes:
        read / kept: Structures read (in this part) and kept after filtering.
        counts: Kept structures per split.  filtered: Rejected structures per reason.
        elements: Atomic numbers present.  atoms / edges: Totals over kept structures.
        energy: Statistics of the total energy, eV.
        energy_per_atom_after_reference: Of (E - sum of element references) / atoms, eV/atom (not in a part).
        reference_energies: ``{Z: eV}`` fitted element references (not in a part: the merge fits them).
        reference_factor: A part's composition factor that the merge fits the references from.
        parts: How many parts a merged dataset was built from.
    """

    head_id: int
    read: int
    kept: int
    counts: dict[str, int]
    filtered: dict[str, int]
    elements: list[int]
    atoms: int
    edges: int
    energy: EnergyStats | None
    energy_per_atom_after_reference: EnergyStats | None = None
    reference_energies: dict[str, float] | None = None
    reference_factor: dict[str, Any] | None = None
    with_forces: int
    with_stress: int
    parts: int | None = None


class PartRef(Result):
    """A part a merged store reads, and the content hash of its summary."""

    dir: str
    content_hash: str


class PreprocessSummary(Result):
    """What ``python -m models.preprocess`` returns (also saved as ``<output_dir>/summary.json``).

    Attributes:
        content_hash: Hash of the normalised config, the inputs' sha256 and the store schema: a re-run with the
            same hash and intact outputs returns the saved summary with ``skipped`` true.
        datasets: ``{name: summary}``.  input_files: Absolute paths.  output_files: Relative to ``output_dir``.
        config: The normalised config the run used.  seconds: Wall time of the run that built it.
    """

    status: Literal["ok"] = "ok"
    content_hash: str
    schema_version: int
    output_dir: str
    datasets: dict[str, DatasetSummary]
    input_files: list[OutputFile]
    output_files: list[OutputFile]
    config: dict[str, Any]
    parts: list[PartRef] | None = None
    seconds: float
    skipped: bool


def read_result(raw: Any, where: str) -> PreprocessSummary:
    """A finished preprocessing task's result (:class:`models.appio.BadInput` naming ``where`` if it is not one)."""
    return validate(PreprocessSummary, raw, where)
