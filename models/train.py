"""The distributed training app: ``python -m models.train --config run.json --result result.json``.

Launch it as one process or under ``torchrun`` / ``srun`` / ``mpiexec`` (see :mod:`models.distributed`); gloo on
CPU, nccl on GPU. The config is :class:`models.contracts.train.TrainConfig` (its result :class:`models.contracts.train.TrainResult`).

What it does per epoch: a training pass (the same number of steps on every rank: the minimum of the ranks'
loader lengths), gradient sync (all ranks, or encoder over all ranks and heads over their head group with
``head_groups``), a validation pass over every validation graph once, per-head metrics to
``<output_dir>/metrics.jsonl``, early stopping, and a checkpoint ``checkpoints/last.pt`` (``best.pt`` when the
validation loss improves) written atomically with a sha256 sidecar.

The result JSON holds ``objective`` (= the BEST epoch's validation loss), ``best_epoch``, ``best_val_metrics``
per head, ``last_epoch``, ``completed`` (false when ``time_limit_s`` stopped the chunk early: continue it with
``resume_from``), ``stop_reason``, ``wall_time_s``, ``train_graphs_per_s``, ``data_wait_fraction`` (the share of
the training steps' time spent waiting for batches), ``peak_memory_bytes``,
``resumed_from_epoch``, ``initialised_from`` (the ``init_from`` checkpoint whose weights started a fresh run) and
the checkpoint paths with their sha256, and ``history``: every per-epoch figure of ``metrics.jsonl`` by value
(:class:`models.contracts.train.TrainResult`).

A single-rank run may also be called inside a worker process (:data:`run_in_process`).
"""

from __future__ import annotations

import json
import math
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from models import checkpoint
from models.appio import PREEMPTED_STOP, BadInput, RunFailed, main_for
from models.contracts.train import TrainConfig, TrainResult, parse_config
from models.data.memory_budget import rank_room_bytes
from models.distributed import (
    GradSync,
    all_reduce_,
    assign_head_groups,
    init,
    is_initialized,
    shutdown,
)
from models.energy import EnergyMeter, combine
from models.launch import detect
from models.nn.precision import param_dtype
from models.training.data import dataset_head, eval_batches, open_stores
from models.training.early_stopping import EarlyStopping
from models.training.loop import PartialEpoch, Trainer
from models.training.metrics import MetricsWriter, read_metrics
from models.training.preemption import PreemptionWatch
from models.training.schedule import Schedule

#: ``data_in_memory: share`` holds a rank's share only while it takes at most this fraction of the memory the rank
#: may still fill (:func:`models.data.memory_budget.rank_room_bytes`); a larger share is read from the files.
HOLD_SHARE_OF_ROOM = 0.5


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: CUDA max allocated on GPU, else the max resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def training_state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of this rank's parameters and of its optimizer state (AdamW's moments exist only for parameters that
    received a gradient: with head groups, the rank's own heads and the encoder)."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    state = sum(v.numel() * v.element_size() for st in optimizer.state.values() for v in st.values()
                if isinstance(v, torch.Tensor))
    return {"parameters": int(params), "optimizer": int(state), "total": int(params + state)}


def _gather(obj: Any) -> list[Any]:
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _agree_min(value: int) -> int:
    if not is_initialized():
        return value
    t = all_reduce_(torch.tensor([value], dtype=torch.int64), op=dist.ReduceOp.MIN)
    return int(t.item())


def _agree_flag(flag: bool) -> bool:
    """True on every rank when rank 0 says so."""
    if not is_initialized():
        return flag
    # rank 0's flag wins: a MAX over (flag on rank 0, 0 elsewhere)
    mine = 1 if (flag and dist.get_rank() == 0) else 0
    t = all_reduce_(torch.tensor([mine], dtype=torch.int64), op=dist.ReduceOp.MAX)
    return bool(t.item())


def _agree_any(flag: bool) -> bool:
    """True on every rank when any rank says so."""
    if not is_initialized():
        return flag
    t = all_reduce_(torch.tensor([1 if flag else 0], dtype=torch.int64), op=dist.ReduceOp.MAX)
    return bool(t.item())


def run(cfg: TrainConfig, config_path: Path | str = "<config>") -> dict[str, Any]:
    """Train as configured on this rank; returns the result (identical on every rank but ``history``: rank 0's).

    Raises:
        BadInput: unusable config, data or checkpoint.
        RunFailed: a non-finite loss or gradient (``reason="nan"``).
    """
    from models.nn.loss import multitask_loss
    from models.nn.model import build_model

    t_start = time.perf_counter()
    denv = detect()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        device = init(denv, device=cfg.device, gpus_per_rank=cfg.gpus_per_rank)
    except ValueError as exc:
        raise BadInput(f"{config_path}: field 'device': {exc}") from exc
    try:
        with PreemptionWatch() as watch:  # the scheduler's warning: checkpoint at the next step and stop
            result = _run(
                cfg, config_path, denv.rank, denv.world_size, device, t_start, build_model, multitask_loss, watch,
                EnergyMeter(device, denv.local_rank), denv.local_world_size,
            )
        # validated against the contract the campaign reads it with, so a drift fails here, named, not there
        return TrainResult.model_validate({**result, "launcher": denv.launcher}).model_dump(mode="json")
    finally:
        shutdown()


def _run(
    cfg: TrainConfig,
    config_path: Path | str,
    rank: int,
    world: int,
    device: torch.device,
    t_start: float,
    build_model: Any,
    loss_fn: Any,
    watch: PreemptionWatch | None = None,
    meter: EnergyMeter | None = None,
    local_ranks: int = 1,
) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    dtype = param_dtype(cfg.precision)

    resume: dict[str, Any] | None = None
    if cfg.auto_resume and (ckpt_dir / "last.pt").exists():  # this run's own newest state wins
        try:
            resume = checkpoint.load(ckpt_dir / "last.pt")
            cfg = cfg.model_copy(update={"resume_from": str(ckpt_dir / "last.pt")})
        except (OSError, ValueError, RuntimeError) as exc:  # e.g. a sidecar mismatch: start over, loudly
            fallback = cfg.resume_from or "scratch"
            print(f"auto_resume: ignoring {ckpt_dir / 'last.pt'}: {exc}; starting from {fallback}", file=sys.stderr)
    if resume is None and cfg.resume_from:
        try:
            resume = checkpoint.load(cfg.resume_from)
        except (OSError, ValueError, RuntimeError) as exc:
            raise BadInput(f"{config_path}: field 'resume_from': {exc}") from exc
    init: dict[str, Any] | None = None
    if resume is None and cfg.init_from:
        try:
            init = checkpoint.load(cfg.init_from)
        except (OSError, ValueError, RuntimeError) as exc:
            raise BadInput(f"{config_path}: field 'init_from': {exc}") from exc
    if resume or init:
        model_cfg = (resume or init)["model_config"]
    else:
        assert cfg.model is not None
        model_cfg = cfg.model.model_dump(mode="json")

    seed_everything(cfg.seed)
    try:
        model = build_model(dict(model_cfg))
    except (KeyError, ValueError, TypeError) as exc:
        raise BadInput(f"{config_path}: field 'model': {exc}") from exc
    model = model.to(device=device, dtype=dtype)
    if init is not None:  # weights only (cast to this run's precision); optimizer and schedule start fresh
        try:
            model.load_state_dict(init["model_state"])
        except RuntimeError as exc:
            raise BadInput(f"{config_path}: field 'init_from': weights do not fit the model: {exc}") from exc
    heads = sorted(int(h) for h in model.head_ids)

    # --- data: which head each dataset feeds, and which datasets this rank reads
    cache = cfg.data_in_memory == "all"
    train_stores = open_stores(cfg.data_root, cfg.datasets, cfg.train_split, dtype, cache=cache)
    val_stores = open_stores(cfg.data_root, cfg.datasets, cfg.val_split, dtype, cache=cache)
    ds_head = {name: dataset_head(s, name, cfg.dataset_heads) for name, s in train_stores.items()}
    unknown = sorted({h for h in ds_head.values() if h not in heads})
    if unknown:
        raise BadInput(f"{config_path}: datasets feed heads {unknown} that the model does not have ({heads})")
    head_refs = {
        str(ds_head[n]): {str(z): e for z, e in s.reference_energies.items()}
        for n, s in train_stores.items()
        if s.reference_energies
    }
    # what a user of a checkpoint needs to evaluate it as it was trained (models.ase_calculator): the dataset
    # behind each head, and how the graphs were built
    ckpt_meta = {"head_names": {str(ds_head[n]): n for n in train_stores}, "graph": graph_settings(train_stores)}
    groups = None
    loader_rank, loader_world, my_datasets = rank, world, list(cfg.datasets)
    if cfg.head_groups and world > 1:
        used = sorted(set(ds_head.values()))
        sizes = {h: sum(len(s) for n, s in train_stores.items() if ds_head[n] == h) for h in used}
        try:
            groups = assign_head_groups(world, used, sizes)
        except ValueError as exc:
            raise BadInput(f"{config_path}: field 'head_groups': {exc}") from exc
        # heads without data get a one-rank "group" of rank 0 so every head has an owner
        for h in heads:
            groups.setdefault(h, [0])
        my_head = next(h for h in used if rank in groups[h])
        my_datasets = [n for n in cfg.datasets if ds_head[n] == my_head]
        loader_rank, loader_world = groups[my_head].index(rank), len(groups[my_head])

    from models.data.loader import MultiDatasetLoader

    try:
        loader = MultiDatasetLoader(
            [train_stores[n] for n in my_datasets],
            cfg.batch_size,
            sampling=cfg.sampling,
            rank=loader_rank,
            world_size=loader_world,
            seed=cfg.seed,
        )
    except ValueError as exc:
        raise BadInput(f"{config_path}: field 'sampling' or 'batch_size': {exc}") from exc
    if cfg.data_in_memory == "share":  # this rank's graphs only: its sampler's shard, its validation stride
        shares = [(train_stores[name], loader.shard_indices(d)) for d, name in enumerate(my_datasets)]
        shares += [(store, np.arange(rank, len(store), world)) for store in val_stores.values()]
        need = sum(store.share_bytes(ix) for store, ix in shares)
        room = rank_room_bytes(local_ranks)
        if room is None or need <= HOLD_SHARE_OF_ROOM * room:
            for store, ix in shares:
                store.retain(ix)
        else:  # held, it would crowd out the model or get the rank killed: every batch is read from the files
            print(f"data_in_memory share: rank {rank}'s share of the data ({need / 2**30:.2f} GiB) is more than "
                  f"{HOLD_SHARE_OF_ROOM:.0%} of the {room / 2**30:.2f} GiB it may still use: its batches are read "
                  "from the stores' files", file=sys.stderr, flush=True)
    data_bytes = sum(s.held_bytes() for s in [*train_stores.values(), *val_stores.values()])

    sync = GradSync(model, groups)
    if resume is None:
        sync.broadcast_all(0)
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.optimizer.lr,
        weight_decay=cfg.optimizer.weight_decay,
        betas=cfg.optimizer.betas,
        eps=cfg.optimizer.eps,
    )
    steps_per_epoch = _agree_min(len(loader))
    if steps_per_epoch == 0:
        raise BadInput(
            f"{config_path}: a rank has no training batch (batch_size {cfg.batch_size} too large?)"
        )
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    schedule = Schedule(opt, cfg.scheduler.model_dump(), total_steps=total_steps)
    stopper = EarlyStopping(cfg.patience, cfg.min_delta)
    trainer = Trainer(
        model,
        optimizer=opt,
        schedule=schedule,
        sync=sync,
        loss_fn=loss_fn,
        device=device,
        precision=cfg.precision,
        head_weights=cfg.head_weights,
        force_weight=cfg.force_weight,
        energy_loss=cfg.energy_loss,
        grad_clip=cfg.grad_clip,
        node_weights=cfg.node_loss_weights,
    )

    start_epoch = 0
    partial: PartialEpoch | None = None
    best: dict[str, Any] = {"epoch": -1, "loss": math.inf, "per_head": {}}
    ckpts: dict[str, dict[str, str]] = {}
    if resume is not None:
        model.load_state_dict(resume["model_state"])
        per_rank = resume["ranks"]
        mine = per_rank[rank] if len(per_rank) == world else per_rank[0]
        opt.load_state_dict(mine.get("optimizer") or resume["optimizer"])
        schedule.load_state_dict(resume["scheduler"])
        stopper.load_state_dict(resume["early_stopping"])
        loader.load_state_dict(mine["loader"])
        checkpoint.set_rng_state(mine["rng"])
        trainer.step = int(resume["step"])
        start_epoch = int(resume["epoch"]) + 1  # the last epoch completed, + 1 (an interrupted one: its own)
        cut = resume.get("partial_epoch")
        if cut is not None:  # checkpointed mid-epoch on the scheduler's signal: finish that epoch first
            partial = PartialEpoch(int(cut["epoch"]), int(cut["steps_done"]), mine["partial_acc"], float(cut["seconds"]))
        best = resume["best"]
        ckpts = dict(resume.get("checkpoints", {}))

    writer = (
        MetricsWriter(out / "metrics.jsonl", resume_after_epoch=start_epoch - 1 if resume else None)
        if rank == 0
        else None
    )

    train_graphs, train_seconds, train_wait = 0, 0.0, 0.0
    epoch_seconds = 0.0
    last_epoch = start_epoch - 1
    stop_reason = "epochs"
    completed = True
    epoch = start_epoch

    def preempted() -> bool:
        return watch is not None and _agree_any(watch.requested)

    if meter is not None:
        meter.start()
    while epoch < cfg.epochs:
        if preempted():  # between epochs (e.g. during validation): the last checkpoint is this chunk's end
            stop_reason, completed = PREEMPTED_STOP, False
            break
        if stopper.should_stop:  # e.g. resumed from a run that had already stopped early
            stop_reason = "early_stopping"
            break
        if cfg.stop_file and (epoch > start_epoch or resume is not None) and _agree_flag(Path(cfg.stop_file).exists()):
            stop_reason = "stopped"  # asked to stop by the campaign (early stopping of a poor HPO trial)
            break
        if cfg.max_steps and trainer.step >= cfg.max_steps:
            stop_reason = "max_steps"
            break
        if cfg.chunk_epochs is not None and epoch - start_epoch >= cfg.chunk_epochs:
            stop_reason, completed = "chunk_epochs", False
            break
        if cfg.time_limit_s is not None and epoch > start_epoch:
            # the next epoch must end before the limit (estimate: the slowest epoch so far, +20 %)
            elapsed = time.perf_counter() - t_start
            if _agree_flag(elapsed + 1.2 * epoch_seconds > cfg.time_limit_s):
                stop_reason, completed = "time_limit", False
                break
        t_epoch = time.perf_counter()
        loader.set_epoch(epoch)
        resumed = partial if partial is not None and partial.epoch == epoch else None
        partial = None
        steps = steps_per_epoch
        if cfg.max_steps:
            steps = min(steps, (resumed.steps_done if resumed else 0) + cfg.max_steps - trainer.step)
        tr = trainer.train_epoch(loader, steps, epoch=epoch, stop=preempted if watch is not None else None,
                                 resume=resumed)
        if tr.partial is not None:  # the scheduler's signal mid-epoch: checkpoint this step, continue it later
            ckpts["last"] = _save_last(ckpt_dir / "last.pt", rank, model, model_cfg, head_refs, opt, schedule,
                                       stopper, loader, trainer.step, last_epoch, best, ckpts, cfg,
                                       grouped=groups is not None, meta=ckpt_meta, partial=tr.partial)
            stop_reason, completed = PREEMPTED_STOP, False
            break
        train_graphs += tr.graphs
        train_seconds += tr.seconds
        train_wait += tr.data_wait_s
        va = trainer.evaluate(eval_batches(val_stores, cfg.batch_size, rank=rank, world_size=world))
        if not math.isfinite(va.loss):
            raise RunFailed(f"validation loss is {va.loss} at epoch {epoch}", reason="nan")
        schedule.after_epoch(va.loss)
        improved = stopper.update(epoch, va.loss)
        if improved:
            best = {"epoch": epoch, "loss": va.loss, "per_head": {str(h): m for h, m in va.per_head.items()}}
        if writer is not None:
            writer.write(epoch, "train", {**tr.as_rows(), None: {"loss": tr.loss, "lr": schedule.lr}})
            writer.write(epoch, "val", va.as_rows())
        last_epoch = epoch
        epoch += 1
        if improved:
            ckpts["best"] = _save_best(model, model_cfg, head_refs, epoch - 1, va, ckpt_dir / "best.pt", rank,
                                       ckpt_meta)
        ckpts["last"] = _save_last(
            ckpt_dir / "last.pt",
            rank,
            model,
            model_cfg,
            head_refs,
            opt,
            schedule,
            stopper,
            loader,
            trainer.step,
            last_epoch,
            best,
            ckpts,
            cfg,
            grouped=groups is not None,
            meta=ckpt_meta,
        )
        epoch_seconds = max(epoch_seconds, time.perf_counter() - t_epoch)
    else:
        if cfg.max_steps and trainer.step >= cfg.max_steps:
            stop_reason = "max_steps"

    energy = combine(_gather(meter.stop())) if meter is not None else None
    if "last" not in ckpts and cfg.resume_from:  # stopped before any epoch of this chunk
        ckpts["last"] = {"path": cfg.resume_from, "sha256": checkpoint.sha256_file(cfg.resume_from)}
    wall = time.perf_counter() - t_start
    mem = max(_gather(peak_memory_bytes(device)))
    state = max(_gather(training_state_bytes(model, opt)), key=lambda d: d["total"])
    return {
        "completed": completed,
        "stop_reason": stop_reason,
        "objective": best["loss"] if best["epoch"] >= 0 else None,
        "best_val_loss": best["loss"] if best["epoch"] >= 0 else None,
        "best_epoch": best["epoch"],
        "best_val_metrics": best["per_head"],
        "last_epoch": last_epoch,
        "epochs_this_chunk": last_epoch - start_epoch + 1,
        "steps": trainer.step,
        "wall_time_s": wall,
        "train_graphs_per_s": train_graphs / train_seconds if train_seconds > 0 else None,
        "data_wait_fraction": max(_gather(train_wait / train_seconds)) if train_seconds > 0 else None,
        "peak_memory_bytes": mem,
        "data_bytes": max(_gather(data_bytes)),
        "state_bytes": state,
        "checkpoints": ckpts,
        "metrics_path": str(out / "metrics.jsonl"),
        "history": read_metrics(out / "metrics.jsonl") if rank == 0 else [],
        "world_size": world,
        "n_params": sum(p.numel() for p in model.parameters()),
        "resumed_from_epoch": start_epoch if resume is not None else None,
        "initialised_from": cfg.init_from if init is not None else None,
        "precision": cfg.precision,
        "head_groups": {str(h): r for h, r in groups.items()} if groups else None,
        "energy_gpu_j": energy.gpu_j if energy else None,
        "energy_cpu_j": energy.cpu_j if energy else None,
        "energy_dram_j": energy.dram_j if energy else None,
        "gpu_utilisation_percent": energy.gpu_utilisation_percent if energy else None,
    }


def graph_settings(stores: dict[str, Any]) -> dict[str, Any]:
    """How the training graphs were built (``cutoff`` Å, ``max_neighbours``), from the stores' attributes: the same
    for every dataset, else ``None`` for that key (a model trained on graphs built two ways)."""
    out: dict[str, Any] = {}
    for key in ("cutoff", "max_neighbours"):
        values = {json.dumps(s.attrs.get(key)) for s in stores.values()}
        out[key] = json.loads(values.pop()) if len(values) == 1 else None
    return out


def _save_best(
    model: torch.nn.Module,
    model_cfg: dict[str, Any],
    head_refs: dict[str, Any],
    epoch: int,
    va: Any,
    path: Path,
    rank: int,
    meta: dict[str, Any],
) -> dict[str, str]:
    """Weights-only checkpoint of the best epoch (enough for :class:`models.inference.Predictor` and
    :class:`models.ase_calculator.ModelCalculator`); ``meta``: ``head_names`` and ``graph``."""
    digest = ""
    if rank == 0:
        digest = checkpoint.save(
            {
                "model_config": dict(model_cfg),
                "model_state": model.state_dict(),
                "head_references": head_refs,
                **meta,
                "epoch": epoch,
                "val_loss": va.loss,
                "val_metrics": {str(h): m for h, m in va.per_head.items()},
            },
            path,
        )
    return {"path": str(path), "sha256": _agree_str(digest)}


def _agree_str(value: str) -> str:
    return _gather(value)[0]


def _save_last(
    path: Path,
    rank: int,
    model: torch.nn.Module,
    model_cfg: dict[str, Any],
    head_refs: dict[str, Any],
    opt: torch.optim.Optimizer,
    schedule: Schedule,
    stopper: EarlyStopping,
    loader: Any,
    step: int,
    epoch: int,
    best: dict[str, Any],
    ckpts: dict[str, dict[str, str]],
    cfg: TrainConfig,
    *,
    grouped: bool,
    meta: dict[str, Any],
    partial: PartialEpoch | None = None,
) -> dict[str, str]:
    """Full resumable state; per-rank parts (RNG, sampler, and the optimizer in grouped mode) are gathered.

    ``epoch`` is the last epoch completed; ``partial``, an epoch interrupted after it at a step boundary (the
    loader's position and each rank's metric accumulator let a resumed run finish it exactly).
    """
    mine: dict[str, Any] = {"rng": checkpoint.rng_state(), "loader": loader.state_dict()}
    if grouped:
        mine["optimizer"] = opt.state_dict()
    if partial is not None:
        mine["partial_acc"] = partial.acc
    per_rank = _gather(mine)
    digest = ""
    if rank == 0:
        digest = checkpoint.save(
            {
                "model_config": dict(model_cfg),
                "model_state": model.state_dict(),
                "head_references": head_refs,
                **meta,
                "optimizer": None if grouped else opt.state_dict(),
                "scheduler": schedule.state_dict(),
                "early_stopping": stopper.state_dict(),
                "epoch": epoch,
                "partial_epoch": None if partial is None else
                {"epoch": partial.epoch, "steps_done": partial.steps_done, "seconds": partial.seconds},
                "step": step,
                "best": best,
                "ranks": per_rank,
                "checkpoints": {k: v for k, v in ckpts.items() if k != "last"},
                "train_config": cfg.model_dump(mode="json"),
            },
            path,
        )
    return {"path": str(path), "sha256": _agree_str(digest)}


def app(raw: dict[str, Any], config_path: Path) -> dict[str, Any]:
    """``main_for`` entry: validate the config and train."""
    return run(parse_config(raw, config_path), config_path)


#: A single-rank run may be called inside a worker process (``run_task(..., in_process=True)``): no Python
#: start-up per task. Multi-rank runs always go through the launcher (torchrun / srun / mpiexec).
run_in_process = app


if __name__ == "__main__":
    main_for(app, "Train a multi-head GNN (DDP over torchrun / srun / mpiexec).")
