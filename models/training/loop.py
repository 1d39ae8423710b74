"""The epoch loop: forward (energy + forces), multi-task loss, backward, gradient sync, clipping, AdamW step,
NaN/Inf detection, and per-head metrics reduced over all ranks.

Metrics per head are graph-weighted means over the epoch: ``loss`` (the head's weighted energy + force loss),
``energy_mae_per_atom`` (eV/atom) and ``force_mae`` (eV/Å). The epoch's total loss (head ``None``) is
``sum_d w_d * loss_d`` with the head weights of the run, i.e. the same formula as one training step applied to
the whole split; the validation total loss is the run's objective.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch_geometric.data import Batch

from models.appio import RunFailed
from models.distributed import GradSync, all_reduce_
from models.nn.precision import cast_batch, param_dtype, precision_context
from models.training.schedule import Schedule

#: Per-head metric names aggregated by the loop, in the order of the accumulator's columns.
METRIC_NAMES = ("loss", "energy_mae_per_atom", "force_mae")

LossFn = Callable[..., tuple[torch.Tensor, dict[int, dict[str, torch.Tensor]]]]


@dataclass
class PartialEpoch:
    """A training pass interrupted at a step boundary, as a mid-epoch checkpoint keeps it.

    Attributes:
        epoch: The epoch of the pass.
        steps_done: Optimizer steps of the pass done (the same on every rank).
        acc: This rank's metric accumulator so far, shape ``(n_heads, 5)``, float64, on the CPU (columns as in
            :meth:`Trainer._accumulate`).
        seconds: Wall time of the pass so far, s.
    """

    epoch: int
    steps_done: int
    acc: torch.Tensor
    seconds: float


@dataclass
class EpochResult:
    """Figures of one pass over a split, identical on every rank.

    Attributes:
        loss: Weighted total loss (``sum_d w_d * loss_d``), or NaN when no graph was seen.
        per_head: ``{head_id: {metric: value}}`` for the heads that had graphs.
        graphs: Graphs processed by all ranks.
        steps: Optimizer steps (training) or batches (evaluation) on this rank.
        seconds: Wall time of the pass, s.
        data_wait_s: Of ``seconds``, the time this rank's training steps waited for their batch, s.
        partial: Set when a training pass was interrupted (``stop``) before its last step: the figures are then
            not reduced (``loss`` is NaN) and this is what a mid-epoch checkpoint keeps to finish the pass later.
    """

    loss: float
    per_head: dict[int, dict[str, float]] = field(default_factory=dict)
    graphs: int = 0
    steps: int = 0
    seconds: float = 0.0
    data_wait_s: float = 0.0
    partial: PartialEpoch | None = None

    def as_rows(self) -> dict[int | None, dict[str, float]]:
        """``{None: {"loss": total}, head: {...}}`` for :class:`~models.training.metrics.MetricsWriter`."""
        return {None: {"loss": self.loss}, **self.per_head}


class Trainer:
    """Runs training and evaluation passes of a multi-head model (one instance per rank)."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        sync: GradSync,
        loss_fn: LossFn,
        device: torch.device,
        precision: str = "fp32",
        head_weights: Mapping[int, float] | None = None,
        force_weight: float = 10.0,
        energy_loss: str = "mse",
        grad_clip: float | None = 10.0,
        node_weights: Mapping[str, float] | None = None,
    ) -> None:
        """Args:
        model: The unwrapped :class:`models.nn.model.MultiHeadModel`.
        optimizer: AdamW over its parameters.
        schedule: Learning-rate schedule.
        sync: Gradient synchronisation (world or head groups).
        loss_fn: ``models.nn.loss.multitask_loss``.
        device: Compute device.
        precision: ``fp64`` | ``fp32`` | ``bf16`` (rules of :mod:`models.nn.precision`).
        head_weights: ``{head_id: w_d}``; 1 for heads not listed.
        force_weight: Weight of the force term.
        energy_loss: ``"mse"`` or another name the loss accepts.
        grad_clip: Max global gradient norm (``None`` or <= 0: no clipping, the norm is still checked).
        node_weights: ``{name: weight}`` of direct node heads (other than ``forces``) in the loss.
        """
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.sync = sync
        self.loss_fn = loss_fn
        self.device = device
        self.precision = precision
        self.dtype = param_dtype(precision)
        self.heads = sorted(int(h) for h in model.head_ids)
        self.head_weights = {h: float((head_weights or {}).get(h, 1.0)) for h in self.heads}
        self.force_weight = float(force_weight)
        self.energy_loss = energy_loss
        self.node_weights = dict(node_weights or {})
        self.grad_clip = grad_clip if grad_clip and grad_clip > 0 else math.inf
        self.step = 0

    def _prepare(self, batch: Batch) -> Batch:
        return cast_batch(batch.to(self.device, non_blocking=True), self.precision)

    def _loss(self, batch: Batch) -> tuple[torch.Tensor, dict[int, dict[str, torch.Tensor]]]:
        with precision_context(self.precision, self.device):
            pred = self.model(batch, forces=True)
        return self.loss_fn(
            pred,
            batch,
            head_weights=self.head_weights,
            force_weight=self.force_weight,
            energy_loss=self.energy_loss,
            **({"node_weights": self.node_weights} if self.node_weights else {}),
        )

    def _accumulate(self, acc: torch.Tensor, per_head: Mapping[int, Mapping[str, Any]]) -> None:
        """Add one batch: columns are loss*n_graphs, energy_mae*n_graphs, force_mae*n_force_atoms, n_graphs,
        n_force_atoms."""
        for k, h in enumerate(self.heads):
            stats = per_head.get(h)
            if not stats:
                continue
            ng = torch.as_tensor(stats["n_graphs"], dtype=acc.dtype, device=acc.device)
            nf = torch.as_tensor(stats.get("n_force_atoms", ng), dtype=acc.dtype, device=acc.device)
            vals = [torch.as_tensor(stats[n], dtype=acc.dtype, device=acc.device) for n in METRIC_NAMES]
            acc[k] += torch.stack([vals[0] * ng, vals[1] * ng, vals[2] * nf, ng, nf])  # no host sync

    def _finish(self, acc: torch.Tensor, steps: int, t0: float) -> EpochResult:
        acc = all_reduce_(acc).cpu()
        per_head: dict[int, dict[str, float]] = {}
        total = 0.0
        for k, h in enumerate(self.heads):
            ng, nf = float(acc[k, 3]), float(acc[k, 4])
            if ng > 0:
                per_head[h] = {
                    "loss": float(acc[k, 0]) / ng,
                    "energy_mae_per_atom": float(acc[k, 1]) / ng,
                    "force_mae": float(acc[k, 2]) / nf if nf > 0 else 0.0,
                }
                total += self.head_weights[h] * per_head[h]["loss"]
        return EpochResult(
            loss=total if per_head else math.nan,
            per_head=per_head,
            graphs=int(acc[:, 3].sum()),
            steps=steps,
            seconds=time.perf_counter() - t0,
        )

    def train_epoch(self, batches: Iterable[Batch], steps: int, *, epoch: int = 0,
                    stop: Callable[[], bool] | None = None, resume: PartialEpoch | None = None) -> EpochResult:
        """One training pass of exactly ``steps`` optimizer steps (the same number on every rank).

        Args:
            batches: The pass's batches (a resumed pass: those after ``resume.steps_done``).
            steps: Optimizer steps of the whole pass.
            epoch: The epoch (messages).
            stop: Asked after every step but the last; True (it must agree on every rank) interrupts the pass:
                the result then carries :class:`PartialEpoch` instead of reduced figures.
            resume: An interrupted pass to finish: its steps count as done and its figures are carried on.

        Raises:
            RunFailed: ``reason="nan"`` when a loss or gradient norm is not finite on any rank.
        """
        self.model.train()
        if resume is not None:
            acc = resume.acc.to(device=self.device, dtype=torch.float64).clone()
            done, t0 = resume.steps_done, time.perf_counter() - resume.seconds
        else:
            acc = torch.zeros(len(self.heads), 5, dtype=torch.float64, device=self.device)
            done, t0 = 0, time.perf_counter()
        it = iter(batches)
        wait = 0.0
        try:
            while done < steps:
                t_wait = time.perf_counter()
                try:
                    batch = next(it)
                    wait += time.perf_counter() - t_wait
                except StopIteration:
                    raise RunFailed(
                        f"the loader ran out after {done} of {steps} steps at epoch {epoch}", reason="loader"
                    ) from None
                batch = self._prepare(batch)
                self.optimizer.zero_grad(set_to_none=True)
                loss, per_head = self._loss(batch)
                loss.backward()
                self.sync.reduce()
                norm, bad = self.sync.clip_and_check(loss, self.grad_clip)
                if bad:
                    raise RunFailed(
                        f"non-finite loss or gradient at epoch {epoch}, step {self.step} "
                        f"(loss {float(loss.detach()):.4g}, grad norm {float(norm):.4g} on this rank)",
                        reason="nan",
                    )
                self.optimizer.step()
                self.schedule.after_step()
                self._accumulate(acc, {h: {k: v.detach() for k, v in s.items()} for h, s in per_head.items()})
                self.step += 1
                done += 1
                if stop is not None and done < steps and stop():
                    seconds = time.perf_counter() - t0
                    return EpochResult(loss=math.nan, steps=done, seconds=seconds, data_wait_s=wait,
                                       partial=PartialEpoch(epoch, done, acc.detach().cpu(), seconds))
        finally:  # a loader building batches ahead (models.data.prefetch) stops now, not when collected
            close = getattr(it, "close", None)
            if close is not None:
                close()
        result = self._finish(acc, done, t0)
        result.data_wait_s = wait
        return result

    def evaluate(self, batches: Iterable[Batch]) -> EpochResult:
        """One pass over a validation/test split (forces need autograd, so no ``no_grad``)."""
        self.model.eval()
        self.sync.broadcast_heads()
        acc = torch.zeros(len(self.heads), 5, dtype=torch.float64, device=self.device)
        t0 = time.perf_counter()
        n = 0
        for batch in batches:
            batch = self._prepare(batch)
            _, per_head = self._loss(batch)
            self._accumulate(acc, per_head)
            self.model.zero_grad(set_to_none=True)
            n += 1
        return self._finish(acc, n, t0)
