"""Ranking HPO trials and choosing which ones to promote: pure functions over plain records, no database.

A trial is eligible when it finished (``done``) or was stopped early by the campaign (``pruned``: it still has
a best epoch and a checkpoint) and its objective is a finite number. Eligible trials are ranked by the
objective (best-epoch validation loss, lower is better); ties go to the cheaper trial, then to the lower id,
so a ranking is deterministic. The promotion rule picks the ``top_overall`` best trials, optionally the best
trial of each family, and optionally the Pareto front of objective versus a cost (training wall time or the
number of parameters); each selected trial carries every reason it was selected for.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

#: Trial statuses whose objective counts (see :mod:`db.models.Trial`).
ELIGIBLE_STATUSES: frozenset[str] = frozenset({"done", "pruned"})

CostKey = Literal["wall_time_s", "n_params"]


@dataclass(frozen=True)
class TrialRecord:
    """What ranking needs of one trial.

    Attributes:
        id: The trial row id.
        hpo: Name of its HPO campaign.
        family: Message-passing family.
        status: ``asked`` | ``running`` | ``done`` | ``pruned`` | ``failed``.
        objective: Best-epoch validation loss (lower is better); None when the trial has none.
        wall_time_s: Training wall time in seconds (a cost), None when unknown.
        n_params: Number of model parameters (a cost), None when unknown.
    """

    id: int
    hpo: str
    family: str
    status: str
    objective: float | None
    wall_time_s: float | None = None
    n_params: int | None = None

    @property
    def eligible(self) -> bool:
        """Finished or pruned, with a finite objective."""
        return self.status in ELIGIBLE_STATUSES and self.objective is not None and math.isfinite(self.objective)

    def cost(self, key: CostKey) -> float:
        """The cost on axis ``key`` (``inf`` when unknown, so an unknown cost never dominates)."""
        value = self.wall_time_s if key == "wall_time_s" else self.n_params
        return float(value) if value is not None and math.isfinite(float(value)) else math.inf


@dataclass(frozen=True)
class Rule:
    """A promotion rule (mirrors :class:`campaign.recipe.PromoteSpec`).

    Attributes:
        top_overall: The k best trials across every HPO campaign.
        best_per_family: Also the best trial of each family.
        pareto: Also every trial on the Pareto front of objective versus ``pareto_cost``.
        pareto_cost: The cost axis of the front.
    """

    top_overall: int = 2
    best_per_family: bool = True
    pareto: bool = False
    pareto_cost: CostKey = "wall_time_s"


@dataclass
class Selection:
    """One promoted trial: its rank among all eligible trials (1 = best) and why it was selected."""

    trial: TrialRecord
    rank: int
    reasons: list[str] = field(default_factory=list)


def eligible(trials: Iterable[TrialRecord]) -> list[TrialRecord]:
    """The trials whose objective counts (``done``/``pruned`` with a finite objective)."""
    return [t for t in trials if t.eligible]


def rank_trials(trials: Iterable[TrialRecord], cost: CostKey = "wall_time_s") -> list[TrialRecord]:
    """Eligible trials, best first: by objective, then by ``cost``, then by id."""
    return sorted(eligible(trials), key=lambda t: (float(t.objective or 0.0), t.cost(cost), t.id))


def pareto_front(trials: Sequence[TrialRecord], cost: CostKey = "wall_time_s") -> list[TrialRecord]:
    """The eligible trials that no other trial dominates on (objective, ``cost``), both minimised.

    A trial dominates another when it is no worse on both axes and strictly better on one. Returned by
    increasing cost (so by decreasing objective along the front). Trials with an unknown cost only make the
    front when no trial beats their objective.
    """
    pool = eligible(trials)
    front = []
    for t in pool:
        ot, ct = float(t.objective or 0.0), t.cost(cost)
        dominated = any(
            float(o.objective or 0.0) <= ot and o.cost(cost) <= ct
            and (float(o.objective or 0.0) < ot or o.cost(cost) < ct)
            for o in pool if o is not t
        )
        if not dominated:
            front.append(t)
    return sorted(front, key=lambda t: (t.cost(cost), float(t.objective or 0.0), t.id))


def select(trials: Iterable[TrialRecord], rule: Rule) -> list[Selection]:
    """Apply ``rule``: the selected trials, best first, each with its overall rank and reasons.

    Reasons are ``top_overall``, ``best_of_family`` and ``pareto``. A trial selected for several reasons
    appears once with all of them.
    """
    ranked = rank_trials(trials, rule.pareto_cost)
    rank_of = {t.id: k + 1 for k, t in enumerate(ranked)}
    reasons: dict[int, list[str]] = {}
    for t in ranked[: rule.top_overall]:
        reasons.setdefault(t.id, []).append("top_overall")
    if rule.best_per_family:
        seen: set[str] = set()
        for t in ranked:
            if t.family not in seen:
                seen.add(t.family)
                reasons.setdefault(t.id, []).append("best_of_family")
    if rule.pareto:
        for t in pareto_front(ranked, rule.pareto_cost):
            reasons.setdefault(t.id, []).append("pareto")
    return [Selection(t, rank_of[t.id], reasons[t.id]) for t in ranked if t.id in reasons]


def top_k(selections: Sequence[Selection], k: int) -> list[Selection]:
    """The ``k`` best selections by overall rank (the promoted ensemble)."""
    return sorted(selections, key=lambda s: s.rank)[:k]
