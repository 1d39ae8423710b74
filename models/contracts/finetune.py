"""The fine-tuning app's contract: :class:`FinetuneConfig` in; :class:`FinetuneResult` out, or
:class:`PrepareResult` for a ``prepare_only`` run that only builds the downstream dataset.

See :mod:`models.finetune` for what the app does with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from models.appio import BadInput
from models.contracts import OutputFile, Result, Strict, validate
from models.contracts.hyperparams import ModelHyperparameters
from models.contracts.train import CheckpointRef, MetricRow, OptimizerConfig, SchedulerConfig

#: Downstream data the app generates and labels itself (``files`` reads the user's labelled files instead).
GENERATED_KINDS: tuple[str, ...] = ("xtb-molecules", "emt-alloys")
#: Unit of each fine-tuning target (stored in the store's energy field).
TARGET_UNITS: dict[str, str] = {"energy": "eV", "gap": "eV", "dipole": "D"}


class ReferenceStore(Strict):
    """A preprocessed store whose element reference energies and graph construction (cutoff, neighbour cap) a new
    dataset reuses: a dataset that feeds an existing head must share them (the head predicts energies relative
    to those references, on graphs built that way)."""

    root: str
    dataset: str


class DownstreamData(Strict):
    """A small downstream dataset the app builds (see :mod:`models.finetune`).

    ``test_files``: labelled files whose structures all go to the test split (a fixed held-out set; ``split``
    then spreads ``files`` over train and val only). ``reference_from``: take the element references, cutoff and
    neighbour cap from that store instead of fitting and using ``cutoff``/``max_neighbours``.
    """

    kind: Literal["xtb-molecules", "emt-alloys", "files"]
    target: Literal["energy", "gap", "dipole"] = "energy"
    count: int = Field(100, ge=3)
    seed: int = 0
    elements: list[str] = Field(default_factory=lambda: ["Ni", "Al", "Cu"])
    files: list[str] = Field(default_factory=list)
    test_files: list[str] = Field(default_factory=list)
    reference_from: ReferenceStore | None = None
    cutoff: float = Field(5.0, gt=0)
    max_neighbours: int | None = Field(None, ge=1)
    split: dict[str, float] = Field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})


class FinetuneConfig(Strict):
    """``python -m models.finetune`` config (see :mod:`models.finetune`).

    ``base_data_root`` / ``base_datasets`` / ``base_dataset_heads``: the pre-training data of the base model (as
    its training config names it); when given, the base heads are evaluated on those datasets' ``base_split``
    (validation by default) before and after fine-tuning (``base_heads`` in the result). ``replay``: the share of
    each epoch's graphs drawn from those datasets' train splits (rehearsal against forgetting; 0: none).
    """

    prepare: DownstreamData | None = None
    prepare_only: bool = False
    checkpoint: str | None = None
    data_root: str
    dataset: str
    head: int | None = Field(None, ge=0)
    init_from_head: int | None = None
    freeze_encoder: bool = False
    from_scratch: bool = False
    model: ModelHyperparameters | None = None
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(8, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    precision: Literal["fp64", "fp32", "bf16"] = "fp32"
    force_weight: float = Field(10.0, ge=0)
    energy_loss: str = "mse"
    patience: int = Field(10, ge=0)
    grad_clip: float = Field(10.0, ge=0)
    output_dir: str
    seed: int = 0
    base_data_root: str | dict[str, str] | None = None
    base_datasets: list[str] = Field(default_factory=list)
    base_dataset_heads: dict[str, int] | None = None
    base_split: Literal["val", "test"] = "val"
    replay: float = Field(0.0, ge=0.0, lt=1.0)


def parse_config(raw: dict[str, Any], path: Path | str) -> FinetuneConfig:
    """Validate ``raw``; errors name the file and the field."""
    cfg = validate(FinetuneConfig, raw, path)
    if cfg.prepare_only:
        if cfg.prepare is None:
            raise BadInput(f"{path}: field 'prepare': required with prepare_only")
        if cfg.head is None:
            raise BadInput(f"{path}: field 'head': required with prepare (the new head's id)")
        return cfg
    if cfg.checkpoint is None and not (cfg.from_scratch and cfg.model is not None):
        raise BadInput(f"{path}: field 'checkpoint': required (or from_scratch with 'model')")
    if cfg.replay and (not cfg.base_datasets or cfg.base_data_root is None):
        raise BadInput(f"{path}: field 'replay': needs base_data_root and base_datasets (the data to replay)")
    if cfg.from_scratch and cfg.freeze_encoder:
        raise BadInput(f"{path}: field 'freeze_encoder': a from-scratch baseline cannot freeze its encoder")
    return cfg


class DownstreamSummary(Result):
    """The downstream store a ``prepare`` built (or found intact: ``skipped``).

    Attributes:
        content_hash: Hash of its spec, input files and store schema (equal hash + intact files: not rebuilt).
        counts: Structures per split.  elements: Atomic numbers present.
        unit: Unit of the target (eV for energy and gap, D for dipole), stored in the energy field.
        reference_energies: ``{Z: eV}`` fitted element references.  target_stats: mean, std, min, max.
        with_forces: Structures with force labels.  output_files: The store's files.
    """

    content_hash: str
    dataset: str
    head_id: int
    kind: Literal["xtb-molecules", "emt-alloys", "files"]
    target: Literal["energy", "gap", "dipole"]
    unit: str
    counts: dict[str, int]
    elements: list[int]
    reference_energies: dict[str, float]
    level_of_theory: str
    target_stats: dict[str, float]
    with_forces: int
    store_path: str
    output_files: list[OutputFile]
    skipped: bool


class PrepareResult(Result):
    """What a ``prepare_only`` run returns."""

    status: Literal["ok"] = "ok"
    prepared: DownstreamSummary
    wall_time_s: float


class FinetuneResult(Result):
    """What a fine-tuning (or from-scratch baseline) run returns.

    Attributes:
        objective / best_val_loss: The best epoch's validation loss.
        test_metrics: ``{head_id: {name: value}}`` on the test split at the best epoch (energy MAE per atom
            eV/atom, force MAE eV/Å, loss).
        test_target_mae: Mean absolute error of the target per structure on the test split, in its unit.
        history: Every per-epoch figure (train, val; test at the best epoch), by value.
        trainable_parameters: Parameters the optimizer updated (fewer with ``freeze_encoder``).
        replayed_graphs_per_epoch: Graphs of each epoch drawn from the base datasets (``replay``; 0: none).
        checkpoint: The fine-tuned model (``best.pt``).
        prepared: The downstream store, when this run built it.
        base_heads: ``{head_id: {"before": {...}, "after": {...}}}``: the base heads' figures on ``base_split``
            (energy MAE per atom eV/atom, force MAE eV/Å, loss) on the pre-training data before and after
            fine-tuning, when the config names that data.
    """

    status: Literal["ok"] = "ok"
    objective: float
    best_val_loss: float
    best_epoch: int
    epochs_run: int
    test_loss: float | None
    test_metrics: dict[str, dict[str, float]]
    test_target_mae: float | None
    test_graphs: int
    train_graphs: int
    history: list[MetricRow]
    head: int
    from_scratch: bool
    freeze_encoder: bool
    trainable_parameters: int
    replayed_graphs_per_epoch: int = 0
    checkpoint: CheckpointRef
    wall_time_s: float
    base_heads: dict[str, dict[str, dict[str, float]]] | None = None
    prepared: DownstreamSummary | None = None


def read_prepare_result(raw: Any, where: str) -> PrepareResult:
    """A finished ``prepare_only`` task's result (:class:`BadInput` naming ``where`` if it is not one)."""
    return validate(PrepareResult, raw, where)


def read_result(raw: Any, where: str) -> FinetuneResult:
    """A finished fine-tuning task's result (:class:`BadInput` naming ``where`` if it is not one)."""
    return validate(FinetuneResult, raw, where)
