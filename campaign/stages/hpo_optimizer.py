"""DeepHyper CBO behind a small ask/tell interface whose whole history can be replayed.

DeepHyper's ask/tell persists nothing, so the campaign database records every ask and tell in order (the
``ask_event`` / ``tell_event`` columns of ``trials``) and a restarted driver rebuilds the optimizer by replaying
that log into a fresh optimizer with the same seed: with the same seed and the same told results it makes the
same next suggestions (a test checks this). This is the only module that imports DeepHyper.

Objectives: the campaign minimises a loss; DeepHyper maximises, so a loss ``L`` is told as ``-L`` and a failed
trial as DeepHyper's failure marker ``"F_<cause>"``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from campaign.recipe import CategoricalParam, FloatParam, IntParam

log = logging.getLogger(__name__)


def optimizer_seed(*parts: object) -> int:
    """A stable 31-bit seed from ``parts`` (Python's ``hash`` is salted per process, so not that)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFF_FFFF


def plain(value: Any) -> Any:
    """A JSON-able Python scalar from a numpy scalar (DeepHyper returns numpy types)."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def normalize_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with plain Python values and sorted keys (how configs are stored and compared)."""
    return {k: plain(config[k]) for k in sorted(config)}


def same_config(a: Mapping[str, Any], b: Mapping[str, Any], rel: float = 1e-9) -> bool:
    """Whether two configurations are equal (floats up to a relative tolerance: JSON round trips)."""
    if set(a) != set(b):
        return False
    for k in a:
        x, y = plain(a[k]), plain(b[k])
        if isinstance(x, float) or isinstance(y, float):
            if not (isinstance(x, int | float) and isinstance(y, int | float)):
                return False
            if not math.isclose(float(x), float(y), rel_tol=rel, abs_tol=0.0):
                return False
        elif x != y:
            return False
    return True


@dataclass(frozen=True)
class Told:
    """One told result: the configuration and its loss (``None`` with ``failure`` for a failed trial)."""

    config: dict[str, Any]
    loss: float | None
    failure: str | None = None

    def deephyper_objective(self) -> float | str:
        """DeepHyper's objective: ``-loss`` (it maximises) or ``"F_<cause>"`` for a failure."""
        if self.loss is None or not math.isfinite(self.loss):
            cause = (self.failure or "failed").split()[0].replace(":", "") or "failed"
            return f"F_{cause}"
        return -float(self.loss)


class AskTellOptimizer:
    """DeepHyper's centralized Bayesian optimisation (CBO) driven by ask/tell.

    Args:
        space: The search space ``{name: IntParam | FloatParam | CategoricalParam}`` from the recipe.
        seed: The optimizer's random state.
        log_dir: Where DeepHyper may write (nothing is checkpointed: the database is the record).
        n_initial_points: Random points before the surrogate model is used (default: DeepHyper's, capped at
            ``2 * len(space) + 1`` so that small campaigns still reach the surrogate).
    """

    def __init__(self, space: Mapping[str, IntParam | FloatParam | CategoricalParam], seed: int,
                 log_dir: str | Path, n_initial_points: int | None = None) -> None:
        from deephyper.hpo import CBO, HpProblem

        problem = HpProblem()
        for name in sorted(space):
            p = space[name]
            if isinstance(p, CategoricalParam):
                problem.add_hyperparameter(list(p.choices), name)
            elif isinstance(p, IntParam):
                problem.add_hyperparameter((p.low, p.high, "log-uniform") if p.log else (p.low, p.high), name)
            else:
                problem.add_hyperparameter(
                    (float(p.low), float(p.high), "log-uniform") if p.log else (float(p.low), float(p.high)), name)
        self.names = sorted(space)
        self.seed = seed
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._cbo = CBO(problem, random_state=seed, log_dir=str(log_dir), checkpoint_history_to_csv=False,
                            n_initial_points=n_initial_points or 2 * len(space) + 1, verbose=0)
        self.asked = 0
        self.told = 0

    def ask(self, n: int) -> list[dict[str, Any]]:
        """``n`` new configurations (plain Python values)."""
        if n <= 0:
            return []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            configs = self._cbo.ask(n)
        self.asked += n
        return [normalize_config(c) for c in configs]

    def tell(self, results: Sequence[Told]) -> None:
        """Tell results (in this order)."""
        if not results:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._cbo.tell([({k: r.config[k] for k in self.names}, r.deephyper_objective()) for r in results])
        self.told += len(results)

    def fits(self, config: Mapping[str, Any], space: Mapping[str, IntParam | FloatParam | CategoricalParam]) -> bool:
        """Whether ``config`` lies in ``space`` (warm-start results from another campaign may not)."""
        if set(self.names) - set(config):
            return False
        for name in self.names:
            p, v = space[name], plain(config[name])
            if isinstance(p, CategoricalParam):
                if v not in p.choices:
                    return False
            elif not isinstance(v, int | float) or not (p.low <= v <= p.high):
                return False
            elif isinstance(p, IntParam) and int(v) != v:
                return False
        return True


@dataclass(frozen=True)
class LogEvent:
    """One entry of an HPO campaign's ask/tell log, as stored on trial rows."""

    position: int
    kind: str  # "ask" | "tell"
    trials: tuple[int, ...]  # trial numbers asked together, or the one told


def replay(optimizer: AskTellOptimizer, events: Sequence[LogEvent], configs: Mapping[int, dict[str, Any]],
           told: Mapping[int, Told]) -> list[int]:
    """Rebuild the optimizer's state from the log: ask and tell exactly as recorded, in order.

    Args:
        optimizer: A fresh optimizer with the campaign's seed.
        events: The log, any order (sorted by position here).
        configs: Trial number -> its recorded configuration (the database's, which stays the truth).
        told: Trial number -> what was told for it.

    Returns:
        Trial numbers whose replayed suggestion differed from the recorded one (empty when the optimizer is
        deterministic, as it is with a fixed seed and the same DeepHyper version).
    """
    mismatched: list[int] = []
    for ev in sorted(events, key=lambda e: e.position):
        if ev.kind == "ask":
            suggested = optimizer.ask(len(ev.trials))
            for number, cfg in zip(ev.trials, suggested, strict=True):
                recorded = {k: configs[number][k] for k in optimizer.names if k in configs[number]}
                if not same_config(recorded, cfg):
                    mismatched.append(number)
        else:
            optimizer.tell([told[n] for n in ev.trials])
    if mismatched:
        log.warning("replayed suggestions differ from the recorded ones for trials %s (DeepHyper version "
                    "changed?); the recorded configurations stand", mismatched)
    return mismatched
