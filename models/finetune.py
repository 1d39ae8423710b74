"""Fine-tuning app: ``python -m models.finetune --config ft.json --result result.json``.

Loads a pre-trained checkpoint (sha256-verified), adds an energy head for a new dataset or property (or reuses
the head when the model already has it), keeps the other heads fixed, optionally freezes the shared encoder, trains on a small dataset
(~100 structures is the intended size) with early stopping on its validation split, and reports the test
metrics of the best epoch. ``from_scratch: true`` trains the same architecture from a fresh initialisation
with only the new head: the baseline that tells whether pre-training helped.

Config keys (JSON): ``checkpoint`` (required unless ``from_scratch`` with ``model``), ``data_root``,
``dataset``, ``head`` (default: the store's head id), ``init_from_head`` (copy an existing head's weights),
``freeze_encoder`` (default false), ``from_scratch`` (default false), ``model`` (scratch architecture when no
checkpoint), ``epochs`` (50), ``batch_size`` (8), ``optimizer`` / ``scheduler`` (as in :mod:`models.train`),
``precision`` (fp32), ``force_weight`` (10), ``energy_loss`` (mse), ``patience`` (10), ``grad_clip`` (10),
``output_dir``, ``seed`` (0).

The result holds ``test_metrics`` (per head: energy MAE per atom, force MAE, loss), ``test_loss``,
``objective`` (= the best validation loss), ``best_epoch``, ``epochs_run``, ``trainable_parameters``, and the
fine-tuned checkpoint (``best.pt``, with its sha256), which :class:`models.inference.Predictor` reads.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models import checkpoint
from models.appio import BadInput, main_for
from models.distributed import GradSync, detect, init, shutdown
from models.inference import load_model
from models.nn.precision import param_dtype
from models.training.config import OptimizerConfig, SchedulerConfig
from models.training.data import eval_batches, open_stores
from models.training.early_stopping import EarlyStopping
from models.training.loop import Trainer
from models.training.metrics import MetricsWriter
from models.training.schedule import Schedule


class FinetuneConfig(BaseModel):
    """``python -m models.finetune`` config (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    checkpoint: str | None = None
    data_root: str
    dataset: str
    head: int | None = Field(None, ge=0)
    init_from_head: int | None = None
    freeze_encoder: bool = False
    from_scratch: bool = False
    model: dict[str, Any] | None = None
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


def parse_config(raw: dict[str, Any], path: Path | str) -> FinetuneConfig:
    """Validate ``raw``; errors name the file and the field."""
    try:
        cfg = FinetuneConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise BadInput(f"{path}: field '{field}': {err['msg']}") from None
    if cfg.checkpoint is None and not (cfg.from_scratch and cfg.model is not None):
        raise BadInput(f"{path}: field 'checkpoint': required (or from_scratch with 'model')")
    if cfg.from_scratch and cfg.freeze_encoder:
        raise BadInput(f"{path}: field 'freeze_encoder': a from-scratch baseline cannot freeze its encoder")
    return cfg


def _prepare_model(cfg: FinetuneConfig, head: int, config_path: Path | str) -> tuple[Any, dict[str, Any]]:
    """The model to fine-tune and the head references inherited from the checkpoint."""
    ckpt: dict[str, Any] | None = None
    if cfg.checkpoint is not None:
        try:
            ckpt = checkpoint.load(cfg.checkpoint)
        except (OSError, ValueError, RuntimeError) as exc:
            raise BadInput(f"{config_path}: field 'checkpoint': {exc}") from exc
    from models.nn.model import build_model

    if cfg.from_scratch:
        base = dict(ckpt["model_config"]) if ckpt is not None else dict(cfg.model or {})
        base["heads"] = [head]
        torch.manual_seed(cfg.seed)
        return build_model(base), {}
    assert ckpt is not None
    model = load_model(ckpt)
    if head not in model.head_ids:
        if cfg.init_from_head is not None and cfg.init_from_head not in model.head_ids:
            raise BadInput(
                f"{config_path}: field 'init_from_head': head {cfg.init_from_head} not in the model"
            )
        torch.manual_seed(cfg.seed)
        model.add_head(head, cfg.init_from_head)
    return model, dict(ckpt.get("head_references") or {})


def finetune(cfg: FinetuneConfig, config_path: Path | str = "<config>") -> dict[str, Any]:
    """Fine-tune as configured; returns the result dict.

    Raises:
        BadInput: unusable config, checkpoint or data.
        RunFailed: non-finite loss or gradient (``reason="nan"``).
    """
    t0 = time.perf_counter()
    denv = detect()
    device = init(denv)
    try:
        return _finetune(cfg, config_path, denv.rank, denv.world_size, device, t0)
    finally:
        shutdown()


def _finetune(
    cfg: FinetuneConfig, config_path: Path | str, rank: int, world: int, device: torch.device, t0: float
) -> dict[str, Any]:
    from models.data.loader import MultiDatasetLoader
    from models.nn.loss import multitask_loss

    dtype = param_dtype(cfg.precision)
    splits = {
        s: open_stores(cfg.data_root, [cfg.dataset], s, dtype)[cfg.dataset] for s in ("train", "val", "test")
    }
    head = cfg.head if cfg.head is not None else int(splits["train"].head_id)
    if head < 0:
        raise BadInput(f"{config_path}: field 'head': the store has no head id, give one")
    for store in splits.values():
        store.head_id = head  # batches are labelled with the head being fine-tuned
    model, refs = _prepare_model(cfg, head, config_path)
    model = model.to(device=device, dtype=dtype)
    if splits["train"].reference_energies:
        refs[str(head)] = {str(z): e for z, e in splits["train"].reference_energies.items()}
    if cfg.freeze_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    for key, module in model.heads.heads.items():  # the other heads see no data here: keep them as they are
        if int(key) != head:
            module.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]

    loader = MultiDatasetLoader([splits["train"]], cfg.batch_size, rank=rank, world_size=world, seed=cfg.seed)
    sync = GradSync(model)
    sync.broadcast_all(0)
    opt = torch.optim.AdamW(
        trainable,
        lr=cfg.optimizer.lr,
        weight_decay=cfg.optimizer.weight_decay,
        betas=cfg.optimizer.betas,
        eps=cfg.optimizer.eps,
    )
    schedule = Schedule(opt, cfg.scheduler.model_dump(), total_steps=len(loader) * cfg.epochs)
    trainer = Trainer(
        model,
        optimizer=opt,
        schedule=schedule,
        sync=sync,
        loss_fn=multitask_loss,
        device=device,
        precision=cfg.precision,
        force_weight=cfg.force_weight,
        energy_loss=cfg.energy_loss,
        grad_clip=cfg.grad_clip,
    )
    stopper = EarlyStopping(cfg.patience)
    out = Path(cfg.output_dir)
    writer = MetricsWriter(out / "metrics.jsonl") if rank == 0 else None
    best_state: dict[str, torch.Tensor] | None = None
    last = -1
    for epoch in range(cfg.epochs):
        loader.set_epoch(epoch)
        tr = trainer.train_epoch(loader, len(loader), epoch=epoch)
        va = trainer.evaluate(eval_batches({"v": splits["val"]}, cfg.batch_size, rank=rank, world_size=world))
        schedule.after_epoch(va.loss)
        if writer is not None:
            writer.write(epoch, "train", tr.as_rows())
            writer.write(epoch, "val", va.as_rows())
        if stopper.update(epoch, va.loss):
            best_state = copy.deepcopy(model.state_dict())
        last = epoch
        if stopper.should_stop:
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    te = trainer.evaluate(eval_batches({"t": splits["test"]}, cfg.batch_size, rank=rank, world_size=world))
    if writer is not None:
        writer.write(stopper.best_epoch, "test", te.as_rows())
    digest = ""
    path = out / "checkpoints" / "best.pt"
    if rank == 0:
        digest = checkpoint.save(
            {
                "model_config": dict(model.config),
                "model_state": model.state_dict(),
                "head_references": refs,
                "epoch": stopper.best_epoch,
                "val_loss": stopper.best_loss,
                "finetuned_from": cfg.checkpoint,
                "test_metrics": {str(h): m for h, m in te.per_head.items()},
            },
            path,
        )
    return {
        "objective": stopper.best_loss,
        "best_val_loss": stopper.best_loss,
        "best_epoch": stopper.best_epoch,
        "epochs_run": last + 1,
        "test_loss": te.loss if math.isfinite(te.loss) else None,
        "test_metrics": {str(h): m for h, m in te.per_head.items()},
        "head": head,
        "from_scratch": cfg.from_scratch,
        "freeze_encoder": cfg.freeze_encoder,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "checkpoint": {"path": str(path), "sha256": digest},
        "wall_time_s": time.perf_counter() - t0,
    }


def app(raw: dict[str, Any], config_path: Path) -> dict[str, Any]:
    """``main_for`` entry."""
    return finetune(parse_config(raw, config_path), config_path)


if __name__ == "__main__":
    main_for(app, "Fine-tune a pre-trained multi-head GNN on a small dataset (new head, frozen or not).")
