"""Early stopping of poor HPO trials from the per-epoch validation losses the training app reports.

DeepHyper's stoppers need DeepHyper's own evaluator, which the campaign does not use (Parsl runs the trials),
so the two rules live here as pure functions over learning curves. A curve is the list of a trial's validation
losses, one per completed epoch (index = epoch); lower is better.

- **Median rule** (Golovin et al., *Google Vizier*, 2017): after epoch ``e`` (at least ``min_epochs`` done), stop
  a trial whose best loss so far is worse than the median of the other trials' best losses up to the same epoch,
  once at least ``min_peers`` other trials have reached it.
- **Asynchronous successive halving** (Li et al., *ASHA*, 2020): rungs at ``min_epochs * eta**k`` epochs; a trial
  reaching a rung continues only if its best loss so far is within the best ``1/eta`` of every trial that reached
  that rung (itself included); with fewer than ``eta`` trials at the rung there is no evidence yet and it
  continues.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

Curve = Sequence[float]


def best_so_far(curve: Curve, epochs: int) -> float:
    """The lowest finite loss among the first ``epochs`` epochs of ``curve`` (``inf`` when none)."""
    finite = [v for v in curve[:epochs] if math.isfinite(v)]
    return min(finite) if finite else math.inf


def median_rule(curve: Curve, peers: Sequence[Curve], *, min_epochs: int, min_peers: int = 2) -> bool:
    """Whether the median rule stops the trial with ``curve`` now.

    Args:
        curve: The trial's validation losses so far.
        peers: The other trials' curves (finished or running) of the same HPO campaign.
        min_epochs: Never stop before this many epochs.
        min_peers: Peers that must have reached the same epoch.
    """
    epochs = len(curve)
    if epochs < min_epochs:
        return False
    reached = [best_so_far(p, epochs) for p in peers if len(p) >= epochs]
    if len(reached) < min_peers:
        return False
    return best_so_far(curve, epochs) > statistics.median(reached)


def rungs(min_epochs: int, eta: int, max_epochs: int) -> list[int]:
    """The epochs at which successive halving decides: ``min_epochs * eta**k`` below ``max_epochs``."""
    out, r = [], min_epochs
    while r < max_epochs:
        out.append(r)
        r *= eta
    return out


def successive_halving(curve: Curve, peers: Sequence[Curve], *, min_epochs: int, eta: int,
                       max_epochs: int) -> bool:
    """Whether asynchronous successive halving stops the trial with ``curve`` at its latest rung.

    Args:
        curve: The trial's validation losses so far.
        peers: The other trials' curves of the same HPO campaign.
        min_epochs: The first rung (epochs).
        eta: Reduction factor: the best ``1/eta`` of the trials at a rung go on.
        max_epochs: The trials' full budget (no rung at or beyond it).
    """
    done = [r for r in rungs(min_epochs, eta, max_epochs) if r <= len(curve)]
    if not done:
        return False
    rung = done[-1]
    mine = best_so_far(curve, rung)
    at_rung = [best_so_far(p, rung) for p in peers if len(p) >= rung] + [mine]
    keep = len(at_rung) // eta
    if keep == 0:
        return False
    cutoff = sorted(at_rung)[keep - 1]
    return mine > cutoff


def should_stop(rule: str, curve: Curve, peers: Sequence[Curve], *, min_epochs: int, eta: int,
                max_epochs: int, min_peers: int = 2) -> bool:
    """Apply the recipe's rule (``none``, ``median`` or ``successive_halving``) to one trial."""
    if rule == "none" or len(curve) >= max_epochs:
        return False
    if rule == "median":
        return median_rule(curve, peers, min_epochs=min_epochs, min_peers=min_peers)
    if rule == "successive_halving":
        return successive_halving(curve, peers, min_epochs=min_epochs, eta=eta, max_epochs=max_epochs)
    raise ValueError(f"unknown early-stopping rule {rule!r}")
