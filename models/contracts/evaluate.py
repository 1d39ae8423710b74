"""The evaluation app's contract: :class:`EvaluateConfig` in (one model), :class:`EvaluateResult` out.

See :mod:`models.evaluate` for what the app does with it. Every error figure carries its unit in its name:
energies per atom in meV/atom, force components in meV/Å, stress components in meV/Å^3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from models.contracts import OutputFile, Result, Strict, validate


class EvaluateConfig(Strict):
    """``python -m models.evaluate`` config.

    Attributes:
        checkpoint: The model's checkpoint (``best.pt`` of a trial or a training run).
        data_root: Directory of the preprocessed stores, or ``{dataset: directory}``.
        datasets: The datasets to evaluate, each on the head that was trained on it.
        dataset_heads: Optional ``{dataset: head_id}`` when neither the checkpoint nor the store says it.
        split: The split to evaluate (``test``).
        batch_size: Graphs per batch.
        precision: ``fp64`` | ``fp32`` | ``bf16``.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``xpu``.
        output_dir: Where ``parity.npz`` goes.
        max_parity_atoms: At most this many atoms' force components per dataset in ``parity.npz`` (the first
            ones in split order); the metrics always use every atom.
    """

    checkpoint: str
    data_root: str | dict[str, str]
    datasets: list[str] = Field(min_length=1)
    dataset_heads: dict[str, int] | None = None
    split: Literal["train", "val", "test"] = "test"
    batch_size: int = Field(32, ge=1)
    precision: Literal["fp64", "fp32", "bf16"] = "fp64"
    device: Literal["auto", "cpu", "cuda", "xpu"] = "auto"
    output_dir: str
    max_parity_atoms: int = Field(20000, ge=0)
    threads: int | None = Field(None, ge=1)


class DatasetMetrics(Result):
    """Errors of one model on one dataset's split (its own head). None where the split has no such labels (JSON
    has no NaN, and PostgreSQL refuses one).

    Attributes:
        head: The head id evaluated; ``head_name`` its dataset name as the checkpoint records it.
        graphs / atoms: Structures and atoms evaluated; ``force_atoms`` / ``stress_graphs``: those with labels.
        energy_mae_mev_per_atom / energy_rmse_mev_per_atom: Total-energy errors divided by the atom count, meV/atom.
        force_mae_mev_per_a / force_rmse_mev_per_a: Force-component errors, meV/Å.
        stress_mae_mev_per_a3 / stress_rmse_mev_per_a3: Stress-component errors, meV/Å^3 (periodic cells).
    """

    head: int
    head_name: str | None
    graphs: int
    atoms: int
    force_atoms: int
    stress_graphs: int
    energy_mae_mev_per_atom: float
    energy_rmse_mev_per_atom: float
    force_mae_mev_per_a: float | None
    force_rmse_mev_per_a: float | None
    stress_mae_mev_per_a3: float | None
    stress_rmse_mev_per_a3: float | None


class EvaluateResult(Result):
    """What ``python -m models.evaluate`` returns.

    Attributes:
        split: The split evaluated.
        datasets: ``{dataset: DatasetMetrics}``.
        skipped: ``{dataset: why}`` for datasets the model has no head for.
        parity: ``parity.npz`` (see :data:`campaign.report.data.PARITY_FORMAT`: energies eV/atom, forces eV/Å).
        precision / wall_time_s: How it ran.
    """

    status: Literal["ok"] = "ok"
    split: str
    datasets: dict[str, DatasetMetrics]
    skipped: dict[str, str] = Field(default_factory=dict)
    parity: OutputFile | None
    precision: str
    wall_time_s: float


def parse_config(raw: dict[str, Any], path: Path | str) -> EvaluateConfig:
    """Validate ``raw`` (read from ``path``), raising :class:`~models.appio.BadInput` naming the file and field."""
    return validate(EvaluateConfig, raw, path)


def read_result(raw: Any, where: str) -> EvaluateResult:
    """A task's stored result as an :class:`EvaluateResult` (BadInput naming ``where`` otherwise)."""
    return validate(EvaluateResult, raw, where)
