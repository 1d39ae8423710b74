"""From an HPO campaign's hyperparameters to one trial: its ``models.train`` config and its task.

Searched and fixed hyperparameters are routed by name: optimizer settings, schedule and loop settings (see
:data:`campaign.recipe.TRAINING_KEYS`) into the training config, everything else into the model config (the
family's schema, :mod:`models.contracts.hyperparams`). The heads come from the datasets (one per dataset, the
registry's head id), never from the search. The config is a :class:`models.contracts.train.TrainConfig`, checked
when the trial is planned.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from campaign.recipe import HPOSpec
from campaign.stages.base import app_task_config
from campaign.tasks import ResourceRequest, TaskSpec
from models.contracts import validate
from models.contracts.train import TrainConfig

TRIAL_APP = "models.train"


def trial_dir(workdir: Path, hpo: str, number: int) -> Path:
    """``<workdir>/hpo/<hpo>/trial-0007``: the trial's task directory (config, logs, result, checkpoints)."""
    return workdir / "hpo" / hpo / f"trial-{number:04d}"


def stop_file(workdir: Path, hpo: str, number: int) -> Path:
    """The file whose existence asks the trial to stop at its next epoch boundary."""
    return trial_dir(workdir, hpo, number) / "STOP"


def train_config(spec: HPOSpec, hyperparameters: dict[str, Any], datasets: dict[str, dict[str, Any]], *,
                 out_dir: Path, seed: int, threads: int | None) -> TrainConfig:
    """The ``models.train`` config of one trial.

    Args:
        spec: The HPO campaign.
        hyperparameters: Searched + fixed values of this trial.
        datasets: ``{name: {"root", "head_id", ...}}`` of the preprocess stage, restricted to ``spec.datasets``.
        out_dir: The trial directory.
        seed: Seed of the model initialisation and sampling.
        threads: Torch threads per rank (None: torch's choice).

    Raises:
        models.appio.BadInput: a value the training app or the family's schema refuses.
    """
    hp = dict(hyperparameters)
    optimizer = {k: hp.pop(k) for k in ("lr", "weight_decay") if k in hp}
    scheduler: dict[str, Any] = {"kind": "cosine"}
    if "warmup_steps" in hp:
        scheduler["warmup_steps"] = hp.pop("warmup_steps")
    loop = {k: hp.pop(k) for k in ("grad_clip",) if k in hp}
    names = list(datasets)
    raw: dict[str, Any] = {
        "data_root": {n: str(datasets[n]["root"]) for n in names},
        "datasets": names,
        "dataset_heads": {n: int(datasets[n]["head_id"]) for n in names},
        "batch_size": hp.pop("batch_size", spec.batch_size),
        "force_weight": hp.pop("force_weight", spec.force_weight),
        "model": {"family": spec.family, **hp, "heads": sorted({int(datasets[n]["head_id"]) for n in names})},
        "optimizer": optimizer,
        "scheduler": scheduler,
        "epochs": spec.epochs,
        "precision": spec.precision,
        "patience": 0,  # the campaign's early-stopping rule decides, not the trial's own patience
        "output_dir": str(out_dir / "run"),
        "seed": seed,
        "auto_resume": True,
        "stop_file": str(out_dir / "STOP"),
        "head_groups": spec.head_groups,
        "threads": threads,
        "device": "cpu" if spec.gpus_per_rank == 0 else "auto",
        "gpus_per_rank": max(1, spec.gpus_per_rank),
        **loop,
    }
    return validate(TrainConfig, raw, f"HPO {spec.name!r} trial config")


def local_threads(site: str, workers: int | None) -> int | None:
    """Torch threads per trial rank on a laptop-like site (cores shared by the workers); None elsewhere."""
    if site not in ("local", "threads"):
        return None
    return max(1, (os.cpu_count() or 1) // max(1, workers or 1))


def trial_task(spec: HPOSpec, number: int, config: TrainConfig, out_dir: Path) -> TaskSpec:
    """The task that runs one trial (``spec.nodes_per_trial`` x ``spec.ranks_per_node`` ranks)."""
    return TaskSpec(
        kind="trial",
        app=TRIAL_APP,
        config=app_task_config(config),
        workdir=str(out_dir),
        resources=ResourceRequest(nodes=spec.nodes_per_trial, ranks_per_node=spec.ranks_per_node,
                                  gpus_per_rank=spec.gpus_per_rank, walltime_s=spec.trial_timeout_s),
        priority=-number,
    )
