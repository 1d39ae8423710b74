"""Ranking and the promotion rule, on plain trial records (no database)."""

from __future__ import annotations

import itertools
import math
import random

from campaign.ranking import Rule, TrialRecord, pareto_front, rank_trials, select, top_k


def _t(id: int, family: str, objective: float | None, status: str = "done", wall: float | None = 10.0,
       n_params: int | None = 1000, hpo: str | None = None) -> TrialRecord:
    return TrialRecord(id=id, hpo=hpo or family, family=family, status=status, objective=objective,
                       wall_time_s=wall, n_params=n_params)


TRIALS = [
    _t(1, "painn", 0.30, wall=50.0),
    _t(2, "painn", 0.10, wall=80.0),
    _t(3, "schnet", 0.20, wall=20.0),
    _t(4, "schnet", 0.50, wall=5.0),
    _t(5, "egnn", 0.15, status="pruned", wall=30.0),
    _t(6, "egnn", None, status="failed"),
    _t(7, "mace", math.nan, status="done"),
    _t(8, "mace", 0.01, status="running"),  # not finished: its objective does not count
    _t(9, "pna", math.inf, status="done"),
]


def test_ranking_keeps_finished_and_pruned_finite_trials_best_first() -> None:
    assert [t.id for t in rank_trials(TRIALS)] == [2, 5, 3, 1, 4]


def test_ties_go_to_the_cheaper_trial_then_the_lower_id() -> None:
    trials = [_t(3, "a", 0.1, wall=9.0), _t(1, "b", 0.1, wall=9.0), _t(2, "c", 0.1, wall=1.0)]
    assert [t.id for t in rank_trials(trials)] == [2, 1, 3]
    assert [t.id for t in rank_trials(trials, "n_params")] == [1, 2, 3]  # equal n_params: by id


def test_top_overall_plus_best_of_each_family() -> None:
    chosen = select(TRIALS, Rule(top_overall=2, best_per_family=True))
    got = {s.trial.id: (s.rank, s.reasons) for s in chosen}
    assert got == {
        2: (1, ["top_overall", "best_of_family"]),
        5: (2, ["top_overall", "best_of_family"]),
        3: (3, ["best_of_family"]),
    }
    assert [s.trial.id for s in chosen] == [2, 5, 3]  # best first


def test_rule_variants() -> None:
    assert [s.trial.id for s in select(TRIALS, Rule(top_overall=4, best_per_family=False))] == [2, 5, 3, 1]
    assert [s.trial.id for s in select(TRIALS, Rule(top_overall=0, best_per_family=True))] == [2, 5, 3]
    assert select([_t(1, "a", None, status="failed")], Rule()) == []
    assert select([], Rule()) == []


def test_pareto_front_of_objective_and_wall_time() -> None:
    front = pareto_front(TRIALS, "wall_time_s")
    # by increasing cost: 4 (5 s, 0.5), 3 (20 s, 0.2), 5 (30 s, 0.15), 2 (80 s, 0.10); 1 is dominated by 3
    assert [t.id for t in front] == [4, 3, 5, 2]
    chosen = select(TRIALS, Rule(top_overall=1, best_per_family=False, pareto=True))
    assert {s.trial.id: s.reasons for s in chosen} == {2: ["top_overall", "pareto"], 5: ["pareto"],
                                                       3: ["pareto"], 4: ["pareto"]}


def test_pareto_front_on_parameter_count_and_unknown_cost() -> None:
    trials = [_t(1, "a", 0.1, n_params=5000), _t(2, "a", 0.2, n_params=100), _t(3, "a", 0.3, n_params=None),
              _t(4, "a", 0.05, n_params=None)]
    # 3 has an unknown (infinite) cost and a worse objective than 2: dominated. 4 has the best objective.
    assert [t.id for t in pareto_front(trials, "n_params")] == [2, 1, 4]


def test_pareto_front_matches_brute_force_on_random_trials() -> None:
    rng = random.Random(7)
    for _ in range(30):
        trials = [_t(k, "f", round(rng.random(), 2), wall=float(rng.randint(1, 6))) for k in range(12)]
        front = {t.id for t in pareto_front(trials)}
        for a in trials:
            dominated = any(b.objective <= a.objective and b.wall_time_s <= a.wall_time_s  # type: ignore[operator]
                            and (b.objective < a.objective or b.wall_time_s < a.wall_time_s)  # type: ignore[operator]
                            for b in trials)
            assert (a.id in front) == (not dominated)
        for a, b in itertools.combinations(front, 2):  # nothing on the front dominates another member
            ta, tb = trials[a], trials[b]
            assert not (ta.objective <= tb.objective and ta.wall_time_s < tb.wall_time_s  # type: ignore[operator]
                        and ta.objective < tb.objective)  # type: ignore[operator]


def test_top_k_is_the_best_ranked_selections() -> None:
    chosen = select(TRIALS, Rule(top_overall=1, best_per_family=True))
    assert [s.trial.id for s in top_k(chosen, 2)] == [2, 5]
    assert [s.trial.id for s in top_k(chosen, 10)] == [2, 5, 3]
