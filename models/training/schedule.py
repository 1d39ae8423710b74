"""Learning-rate schedules: linear warmup + cosine decay per step, or warmup + reduce-on-plateau per epoch.

Both keep their whole state in ``state_dict`` so a resumed run continues the same curve.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau


class WarmupCosine(LRScheduler):
    """Linear warmup from ``0`` to the base rate over ``warmup_steps``, then cosine decay to
    ``min_lr_ratio * base`` at ``total_steps`` (constant after). Stepped once per optimizer step."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        warmup_steps: int,
        total_steps: int,
        min_lr_ratio: float = 0.01,
        last_epoch: int = -1,
    ) -> None:
        """Args:
        optimizer: The optimizer whose ``lr`` is driven.
        warmup_steps: Steps of linear warmup (0 for none).
        total_steps: Step at which the cosine reaches its floor.
        min_lr_ratio: Floor as a fraction of the base rate.
        last_epoch: Index of the last step (``-1`` to start).
        """
        self.warmup_steps = max(0, int(warmup_steps))
        self.total_steps = max(self.warmup_steps + 1, int(total_steps))
        self.min_lr_ratio = float(min_lr_ratio)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """Multiplier of the base rate at ``step``."""
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        t = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """Rates for the current step."""
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]


class Schedule:
    """One object for the training loop: ``after_step()`` every optimizer step, ``after_epoch(val_loss)``
    every epoch; the kind decides which one moves the rate.

    Config keys (``config["scheduler"]``): ``kind`` = ``"cosine"`` (default) | ``"plateau"`` | ``"constant"``,
    ``warmup_steps`` (default 0), ``min_lr_ratio`` (cosine, 0.01), ``factor`` (plateau, 0.5), ``patience``
    (plateau, 5 epochs).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: dict[str, Any], total_steps: int) -> None:
        """Args:
        optimizer: The optimizer.
        cfg: The ``scheduler`` section of the training config.
        total_steps: Planned optimizer steps of the whole run (cosine horizon).
        """
        self.kind = str(cfg.get("kind", "cosine"))
        if self.kind not in ("cosine", "plateau", "constant"):
            raise ValueError(f"scheduler.kind must be cosine, plateau or constant, not {self.kind!r}")
        warmup = int(cfg.get("warmup_steps", 0))
        self.warmup = WarmupCosine(
            optimizer,
            warmup_steps=warmup,
            total_steps=total_steps if self.kind == "cosine" else warmup + 1,
            min_lr_ratio=float(cfg.get("min_lr_ratio", 0.01)) if self.kind == "cosine" else 1.0,
        )
        self.plateau = (
            ReduceLROnPlateau(
                optimizer, factor=float(cfg.get("factor", 0.5)), patience=int(cfg.get("patience", 5))
            )
            if self.kind == "plateau"
            else None
        )
        self.optimizer = optimizer

    def after_step(self) -> None:
        """Advance the per-step part: the cosine, or the warmup of the other kinds (after which they leave the
        rate to the plateau rule)."""
        if self.kind == "cosine" or self.warmup.last_epoch < self.warmup.warmup_steps:
            self.warmup.step()

    def after_epoch(self, val_loss: float) -> None:
        """Advance the per-epoch part (plateau, once warmup is over)."""
        if self.plateau is not None and self.warmup.last_epoch >= self.warmup.warmup_steps:
            self.plateau.step(val_loss)

    @property
    def lr(self) -> float:
        """Current rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        """Resumable state."""
        return {
            "kind": self.kind,
            "warmup": self.warmup.state_dict(),
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
            "lrs": [float(g["lr"]) for g in self.optimizer.param_groups],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.warmup.load_state_dict(state["warmup"])
        if self.plateau is not None and state.get("plateau") is not None:
            self.plateau.load_state_dict(state["plateau"])
        for g, lr in zip(self.optimizer.param_groups, state["lrs"], strict=True):
            g["lr"] = lr
