"""The training app's contract: :class:`TrainConfig` in, :class:`TrainResult` out.

The campaign builds a trial's or a long run's config as a :class:`TrainConfig` and reads the app's result through
:class:`TrainResult`; the per-epoch metrics come back by value in ``TrainResult.history``, so nothing needs to
read the run's files on a filesystem shared with the workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from models.appio import BadInput
from models.contracts import Result, Strict, validate
from models.contracts.hyperparams import ModelHyperparameters


class OptimizerConfig(Strict):
    """AdamW settings."""

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)


class SchedulerConfig(Strict):
    """Learning-rate schedule (see :class:`models.training.schedule.Schedule`)."""

    kind: Literal["cosine", "plateau", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    factor: float = Field(0.5, gt=0, lt=1)
    patience: int = Field(5, ge=0)


class TrainConfig(Strict):
    """``python -m models.train`` config (JSON).

    Attributes:
        data_root: Directory of the ADIOS2 stores written by the preprocessing app, or ``{dataset: directory}``
            when each dataset was preprocessed into its own directory (as the campaign's preprocess stage does).
        datasets: Dataset names to train on (one head each, from the registry).
        dataset_heads: Optional ``{dataset: head_id}`` when the stores do not say which head they feed.
        batch_size: Graphs per batch per rank.
        sampling: Multi-dataset sampling rule passed to the loader.
        train_split / val_split: Split names.
        data_in_memory: ``share`` (default): each rank holds in memory only the graphs its sampler and its share
            of the validation pass read (read once from the stores at start; with head groups only its group's
            datasets), so the data held per rank falls with the number of ranks; a share larger than half the
            memory the rank may still fill (the machine's available memory and its memory cgroup's room, split
            over the node's ranks) is not held but read from the files, as ``none``. ``all``: every rank holds
            every dataset's train and validation arrays; ``none``: nothing held, every batch read from the files.
        model: The model's hyperparameters (ignored when resuming: the checkpoint's are used).
        optimizer / scheduler: AdamW and schedule settings.
        epochs: Epochs to run in total (over all chunks of a resumed run).
        max_steps: Stop after this many optimizer steps in total.
        time_limit_s: Stop at an epoch boundary before this many seconds (walltime-aware chunks; at least one
            epoch runs per chunk so a chunk always makes progress).
        chunk_epochs: Stop after this many epochs of this chunk (the schedule still spans ``epochs``).
        precision: ``fp64`` | ``fp32`` | ``bf16`` (bf16 autocast with fp32 weights).
        force_weight: Weight of the force term in the loss.
        energy_loss: Energy loss kind passed to ``multitask_loss``.
        head_weights: ``{head_id: weight}`` of each head's loss (1 by default).
        node_loss_weights: ``{name: weight}`` of the model's direct node heads other than ``forces`` (trained on
            the batch's per-atom field of that name; see :func:`models.nn.loss.multitask_loss`).
        patience / min_delta: Early stopping on the validation loss (0 patience: never stop).
        grad_clip: Max global gradient norm (0: no clipping).
        head_groups: Multi-task parallelism: ranks grouped per head, heads synchronised within their group.
        output_dir: Where checkpoints and ``metrics.jsonl`` go.
        seed: Seed of the model initialisation and the samplers.
        resume_from: A checkpoint to continue from (model, optimizer, schedule, samplers, RNG).
        init_from: A checkpoint (``best.pt`` or ``last.pt``) whose model config and weights start this run, with
            a fresh optimizer, schedule and epoch count (long training continued from an HPO trial's best
            checkpoint). ``model`` is then ignored; a resume (``resume_from`` / ``auto_resume``) wins over it.
        auto_resume: Continue from ``<output_dir>/checkpoints/last.pt`` when it exists and verifies (a retried
            attempt or the next walltime chunk of the same run picks up where the previous one stopped). It
            wins over ``resume_from``: a retried attempt of a chunk that was started with ``resume_from``
            continues from its own newer checkpoint; without one, ``resume_from`` is used.
        stop_file: Stop at the next epoch boundary once this file exists (how a campaign stops a poor HPO trial
            early: the run ends normally, ``stop_reason`` ``"stopped"``, best checkpoint and result written).
        device: ``auto`` | ``cpu`` | ``cuda`` (NVIDIA, or AMD under ROCm) | ``xpu`` (Intel).
        gpus_per_rank: Devices each rank is given (the rank computes on the first of its own).
        threads: torch intra-op threads per rank (default: leave torch's choice).
    """

    data_root: str | dict[str, str]
    datasets: list[str] = Field(min_length=1)
    dataset_heads: dict[str, int] | None = None
    batch_size: int = Field(16, ge=1)
    sampling: str = "proportional"
    train_split: str = "train"
    val_split: str = "val"
    data_in_memory: Literal["share", "all", "none"] = "share"
    model: ModelHyperparameters | None = None
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1)
    time_limit_s: float | None = Field(None, gt=0)
    chunk_epochs: int | None = Field(None, ge=1)
    precision: Literal["fp64", "fp32", "bf16"] = "fp32"
    force_weight: float = Field(10.0, ge=0)
    energy_loss: str = "mse"
    head_weights: dict[int, float] | None = None
    node_loss_weights: dict[str, float] | None = None
    patience: int = Field(10, ge=0)
    min_delta: float = Field(0.0, ge=0)
    grad_clip: float = Field(10.0, ge=0)
    head_groups: bool = False
    output_dir: str
    seed: int = 0
    resume_from: str | None = None
    init_from: str | None = None
    auto_resume: bool = False
    stop_file: str | None = None
    device: Literal["auto", "cpu", "cuda", "xpu"] = "auto"
    gpus_per_rank: int = Field(1, ge=1)
    threads: int | None = Field(None, ge=1)


def parse_config(raw: dict[str, Any], path: Path | str) -> TrainConfig:
    """Validate ``raw`` (read from ``path``), raising :class:`BadInput` naming the file and field."""
    cfg = validate(TrainConfig, raw, path)
    if cfg.model is None and cfg.resume_from is None and cfg.init_from is None:
        raise BadInput(f"{path}: field 'model': required unless 'resume_from' or 'init_from' gives a checkpoint")
    return cfg


class CheckpointRef(Result):
    """A checkpoint file and its sha256 (hex)."""

    path: str
    sha256: str


class MetricRow(Result):
    """One per-epoch figure: ``head`` is None for run-level figures (total loss, learning rate)."""

    epoch: int
    split: str
    head: int | None
    name: str
    value: float


StopReason = Literal["epochs", "early_stopping", "stopped", "max_steps", "chunk_epochs", "time_limit", "preempted"]


class TrainResult(Result):
    """What ``python -m models.train`` returns (identical on every rank; rank 0 writes it).

    Attributes:
        completed: False when the chunk stopped early (``chunk_epochs`` or ``time_limit``): continue it.
        stop_reason: Why the run stopped; ``stopped`` = asked to through ``stop_file``; ``preempted`` = by the
            scheduler's warning signal (SIGTERM/SIGUSR1), checkpointed at a step boundary, possibly mid-epoch.
        objective: The best epoch's validation loss (None when no epoch ran); the HPO objective.
        best_val_loss: Same as ``objective``.
        best_epoch: Epoch of the best validation loss (-1 when none ran).
        best_val_metrics: ``{head_id: {name: value}}`` at the best epoch (energy MAE per atom eV/atom, force MAE
            eV/Å, loss).
        last_epoch / epochs_this_chunk / steps: Progress after this chunk (epochs count from 0).
        wall_time_s: Wall time of this chunk, s.
        train_graphs_per_s: Training throughput over all ranks (None when no step ran).
        data_wait_fraction: Of the training passes' time, the share the steps waited for their batch, on the rank
            that waited most (None when no step ran): above a few percent the data path starves the model.
        peak_memory_bytes: Peak device (or host) memory of the largest rank.
        data_bytes: Bytes of data the rank holding the most kept in memory (``data_in_memory``): atom, edge and
            per-graph rows.
        state_bytes: ``{"parameters", "optimizer", "total"}`` bytes held by the rank holding the most (with
            head groups a rank keeps optimizer state for its own heads only).
        checkpoints: ``{"best": ..., "last": ...}`` as far as written.
        metrics_path: The run's ``metrics.jsonl`` on the worker's filesystem.
        history: Every per-epoch figure of the run so far (earlier chunks included), by value.
        world_size / n_params / precision: How it ran; ``launcher`` names the launch environment.
        resumed_from_epoch: First epoch of this chunk when it continued a checkpoint.
        initialised_from: The ``init_from`` checkpoint whose weights started a fresh run.
        head_groups: ``{head_id: [ranks]}`` with multi-task parallelism.
        energy_gpu_j / energy_cpu_j / energy_dram_j: Energy of the run's epochs (training and validation) over
            all ranks' GPUs and all nodes' CPU packages and DRAM, J; ``None`` where the hardware does not expose
            it (:mod:`models.energy`).
        gpu_utilisation_percent: Mean GPU utilisation over the ranks' epochs, % (``None``: no GPU measured).
    """

    status: Literal["ok"] = "ok"
    completed: bool
    stop_reason: StopReason
    objective: float | None
    best_val_loss: float | None
    best_epoch: int
    best_val_metrics: dict[str, dict[str, float]]
    last_epoch: int
    epochs_this_chunk: int
    steps: int
    wall_time_s: float
    train_graphs_per_s: float | None
    data_wait_fraction: float | None = None
    peak_memory_bytes: int | None
    data_bytes: int | None = None
    state_bytes: dict[str, int] | None = None
    energy_gpu_j: float | None = None
    energy_cpu_j: float | None = None
    energy_dram_j: float | None = None
    gpu_utilisation_percent: float | None = None
    checkpoints: dict[Literal["best", "last"], CheckpointRef]
    metrics_path: str
    history: list[MetricRow] = Field(default_factory=list)
    world_size: int
    n_params: int
    resumed_from_epoch: int | None
    initialised_from: str | None
    precision: Literal["fp64", "fp32", "bf16"]
    head_groups: dict[str, list[int]] | None
    launcher: str = "single"


def read_result(raw: Any, where: str) -> TrainResult:
    """A finished task's result as :class:`TrainResult` (:class:`BadInput` naming ``where`` if it is not one)."""
    return validate(TrainResult, raw, where)
