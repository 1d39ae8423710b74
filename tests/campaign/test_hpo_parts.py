"""The HPO stage's parts without a campaign: pruning rules, the replayable optimizer, the trial config and the
DeepHyper results.csv export."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from campaign.recipe import CategoricalParam, FloatParam, HPOSpec, IntParam
from campaign.stages.hpo_export import results_rows, write_results_csv
from campaign.stages.hpo_optimizer import (
    AskTellOptimizer,
    LogEvent,
    Told,
    optimizer_seed,
    replay,
    same_config,
)
from campaign.stages.hpo_pruning import median_rule, rungs, should_stop, successive_halving
from campaign.stages.hpo_trials import train_config, trial_task
from models.appio import BadInput

SPACE = {
    "hidden": CategoricalParam(type="categorical", choices=[16, 32, 64]),
    "layers": IntParam(type="int", low=1, high=4),
    "lr": FloatParam(type="float", low=1e-4, high=1e-2, log=True),
}


# ------------------------------------------------------------------------------------------- pruning
def test_median_rule_stops_only_the_worse_half_after_min_epochs() -> None:
    peers = [[5.0, 3.0, 2.0], [6.0, 4.0, 3.0], [4.0, 2.5, 2.0]]
    assert not median_rule([9.0], peers, min_epochs=2)  # too early
    assert median_rule([9.0, 8.0], peers, min_epochs=2)  # best 8.0 > median(3.0, 4.0, 2.5) = 3.0
    assert not median_rule([9.0, 2.0], peers, min_epochs=2)  # best so far 2.0 beats it
    assert not median_rule([9.0, 8.0], peers[:1], min_epochs=2)  # one peer is not evidence (min_peers 2)
    assert median_rule([9.0, 8.0], peers[:1], min_epochs=2, min_peers=1)
    # peers that stopped before this epoch do not count
    assert not median_rule([9.0, 8.0, 7.0], [[1.0, 1.0], [1.0, 1.0]], min_epochs=2)


def test_successive_halving_keeps_the_best_third_at_each_rung() -> None:
    assert rungs(1, 3, 20) == [1, 3, 9]
    peers = [[1.0], [2.0], [3.0], [4.0], [5.0]]
    # six trials at rung 1: the best 6 // 3 = 2 go on
    assert not successive_halving([0.5], peers, min_epochs=1, eta=3, max_epochs=20)
    assert not successive_halving([1.5], peers, min_epochs=1, eta=3, max_epochs=20)
    assert successive_halving([2.5], peers, min_epochs=1, eta=3, max_epochs=20)
    # fewer than eta trials at the rung: no evidence, keep going
    assert not successive_halving([9.0], [[1.0]], min_epochs=1, eta=3, max_epochs=20)
    # between rungs the decision is the last rung's
    assert successive_halving([2.5, 0.1], peers, min_epochs=1, eta=3, max_epochs=20)
    assert not should_stop("none", [9.0, 9.0], peers, min_epochs=1, eta=3, max_epochs=20)
    assert not should_stop("median", [9.0, 9.0], [[1.0, 1.0]] * 3, min_epochs=1, eta=3, max_epochs=2)  # finished
    with pytest.raises(ValueError, match="unknown"):
        should_stop("hyperband", [1.0], [], min_epochs=1, eta=3, max_epochs=4)


# ----------------------------------------------------------------------------------------- optimizer
def _opt(tmp_path: Path, seed: int = 7) -> AskTellOptimizer:
    return AskTellOptimizer(SPACE, seed, tmp_path / "dh", n_initial_points=3)


def _loss(cfg: dict) -> float:
    return abs(math.log10(cfg["lr"]) + 3) + 0.1 * cfg["layers"] + (0.0 if cfg["hidden"] == 32 else 0.5)


def test_asks_are_in_the_space_and_plain_python(tmp_path: Path) -> None:
    opt = _opt(tmp_path)
    for cfg in opt.ask(4):
        assert cfg["hidden"] in (16, 32, 64) and type(cfg["hidden"]) is int
        assert 1 <= cfg["layers"] <= 4 and type(cfg["layers"]) is int
        assert 1e-4 <= cfg["lr"] <= 1e-2 and type(cfg["lr"]) is float
        assert opt.fits(cfg, SPACE)
    assert not opt.fits({"hidden": 128, "layers": 2, "lr": 1e-3}, SPACE)
    assert not opt.fits({"hidden": 32, "layers": 2}, SPACE)


def test_replaying_the_log_gives_the_same_next_suggestions(tmp_path: Path) -> None:
    """An asynchronous history (asks of 2 and 1, tells in arrival order, a failure) replayed into a fresh
    optimizer with the same seed reproduces every recorded suggestion and the next ones."""
    live = _opt(tmp_path)
    configs: dict[int, dict] = {}
    told: dict[int, Told] = {}
    events: list[LogEvent] = []
    pos = 0

    def ask(n: int) -> None:
        nonlocal pos
        first = len(configs)
        for i, c in enumerate(live.ask(n)):
            configs[first + i] = c
        events.append(LogEvent(pos, "ask", tuple(range(first, first + n))))
        pos += 1

    def tell(number: int, failed: bool = False) -> None:
        nonlocal pos
        t = Told(configs[number], None if failed else _loss(configs[number]), "error: crashed" if failed else None)
        live.tell([t])
        told[number] = t
        events.append(LogEvent(pos, "tell", (number,)))
        pos += 1

    ask(2)
    tell(1)
    ask(1)
    tell(0, failed=True)
    tell(2)
    ask(2)
    tell(4)
    tell(3)
    ask(1)
    nxt = live.ask(2)

    fresh = _opt(tmp_path)
    assert replay(fresh, events, configs, told) == []
    assert all(same_config(a, b) for a, b in zip(fresh.ask(2), nxt, strict=True))
    # a different seed gives different suggestions (the test could fail)
    other = _opt(tmp_path, seed=8)
    assert not all(same_config(a, b) for a, b in zip(other.ask(2), [configs[0], configs[1]], strict=True))


def test_replay_keeps_recorded_configs_when_suggestions_differ(tmp_path: Path) -> None:
    opt = _opt(tmp_path)
    bogus = {0: {"hidden": 16, "layers": 1, "lr": 1e-4}}
    mismatched = replay(opt, [LogEvent(0, "ask", (0,)), LogEvent(1, "tell", (0,))], bogus,
                        {0: Told(bogus[0], 1.0)})
    assert mismatched == [0] and opt.told == 1


def test_seeds_are_stable_and_distinct() -> None:
    assert optimizer_seed(0, 0, "painn") == optimizer_seed(0, 0, "painn")
    assert len({optimizer_seed(0, 0, n) for n in ("painn", "schnet", "egnn", "mace")}) == 4
    assert 0 <= optimizer_seed("x") < 2**31


def test_failures_are_told_as_deephyper_failures() -> None:
    assert Told({}, 2.5).deephyper_objective() == -2.5
    assert Told({}, None, "walltime: killed after 60 s").deephyper_objective() == "F_walltime"
    assert Told({}, float("nan"), "nan: loss").deephyper_objective() == "F_nan"


# ------------------------------------------------------------------------------------------ configs
def _spec(**kw) -> HPOSpec:
    base = dict(name="p", family="painn", search_space={"lr": {"type": "float", "low": 1e-4, "high": 1e-2}})
    return HPOSpec.model_validate({**base, **kw})


def test_hyperparameters_are_routed_to_optimizer_model_and_loop(tmp_path: Path) -> None:
    datasets = {"demo-emt": {"root": "/d/emt", "head_id": 100}, "demo-gfn2": {"root": "/d/g2", "head_id": 101}}
    cfg = train_config(_spec(epochs=3, precision="fp64"),
                       {"lr": 2e-3, "weight_decay": 1e-5, "hidden": 32, "layers": 2, "cutoff": 4.5,
                        "batch_size": 8, "warmup_steps": 5, "force_weight": 3.0},
                       datasets, out_dir=tmp_path / "t", seed=11, threads=1)
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (2e-3, 1e-5)
    assert (cfg.scheduler.kind, cfg.scheduler.warmup_steps) == ("cosine", 5)
    assert cfg.model is not None and cfg.model.model_dump(exclude_defaults=True) == {
        "hidden": 32, "layers": 2, "cutoff": 4.5, "heads": [100, 101]}
    assert cfg.model.family == "painn"
    assert cfg.batch_size == 8 and cfg.force_weight == 3.0 and cfg.epochs == 3
    assert cfg.data_root == {"demo-emt": "/d/emt", "demo-gfn2": "/d/g2"}
    assert cfg.dataset_heads == {"demo-emt": 100, "demo-gfn2": 101}
    assert cfg.auto_resume and cfg.stop_file == str(tmp_path / "t" / "STOP") and cfg.patience == 0
    from models.contracts.train import parse_config

    task = trial_task(_spec(epochs=3, precision="fp64"), 0, cfg, tmp_path / "t")
    assert parse_config(task.config, "trial.json") == cfg  # what the task carries is what the app reads


def test_a_combination_the_schema_refuses_is_refused_when_planned(tmp_path: Path) -> None:
    """Each searched value alone is checked with the recipe; a refused combination is caught before dispatch."""
    with pytest.raises(BadInput, match=r"trial config: field 'model.pna': towers \(3\) must divide hidden \(32\)"):
        train_config(_spec(family="pna"), {"hidden": 32, "towers": 3}, {"d": {"root": "/d", "head_id": 0}},
                     out_dir=tmp_path, seed=0, threads=None)


def test_unknown_hyperparameter_fails_recipe_validation() -> None:
    with pytest.raises(ValueError, match="unknown hyperparameter 'num_filters' for family 'painn'"):
        _spec(fixed={"num_filters": 8})
    _spec(family="schnet", fixed={"num_filters": 8})


# ------------------------------------------------------------------------------------------- export
def test_results_csv_is_read_by_deephyper_analysis(tmp_path: Path) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        SimpleNamespace(number=0, config={"hidden": 16, "layers": 2, "lr": 1e-3, "cutoff": 5.0}, objective=3.0,
                        status="done", failure=None, tell_event=2, created_at=t0, finished_at=t0 + timedelta(seconds=9),
                        best_epoch=3, wall_time_s=8.0, family="painn", task_id="a"),
        SimpleNamespace(number=1, config={"hidden": 32, "layers": 1, "lr": 1e-2, "cutoff": 5.0}, objective=None,
                        status="failed", failure="nan: loss is nan", tell_event=1, created_at=t0,
                        finished_at=t0 + timedelta(seconds=4), best_epoch=None, wall_time_s=None, family="painn",
                        task_id="b"),
        SimpleNamespace(number=2, config={"hidden": 32, "layers": 3, "lr": 2e-3, "cutoff": 5.0}, objective=1.5,
                        status="pruned", failure=None, tell_event=3, created_at=t0 + timedelta(seconds=4),
                        finished_at=t0 + timedelta(seconds=12), best_epoch=1, wall_time_s=5.0, family="painn",
                        task_id="c"),
        SimpleNamespace(number=3, config={"hidden": 16, "layers": 1, "lr": 1e-4, "cutoff": 5.0}, objective=None,
                        status="asked", failure=None, tell_event=None, created_at=t0 + timedelta(seconds=9),
                        finished_at=None, best_epoch=None, wall_time_s=None, family="painn", task_id="d"),
    ]
    path = write_results_csv(tmp_path / "results.csv",
                             results_rows(rows, ["hidden", "layers", "lr"], {"a": (t0, t0 + timedelta(seconds=8))}))
    from deephyper.analysis.hpo import parameters_at_max, read_results_from_csv

    df = read_results_from_csv(str(path))
    assert list(df["job_id"]) == [1, 0, 2]  # in tell order; the untold trial is not there
    assert {"p:hidden", "p:layers", "p:lr", "objective", "job_id", "job_status", "m:timestamp_gather"} <= set(df)
    best, objective = parameters_at_max(df)
    assert best == {"hidden": 32, "layers": 3, "lr": 2e-3} and objective == pytest.approx(-1.5)


# --------------------------------------------------------------------------------------- warm start
def test_warm_start_tells_fitting_results_of_an_earlier_campaign_once(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from campaign.ledger import Ledger
    from campaign.recipe import parse_recipe
    from campaign.stages.base import StageContext
    from campaign.stages.hpo import HPOStage
    from db import models as m
    from db.engine import transaction

    ledger = Ledger(engine)
    old = ledger.open_campaign(name="old", recipe_text="campaign: old", recipe_hash="a", site="local").id
    with transaction(ledger.Session) as s:
        s.add_all([
            m.Trial(campaign_id=old, hpo="painn", family="painn", number=0, status="done", objective=2.0,
                    config={"hidden": 32, "layers": 2, "lr": 1e-3, "cutoff": 5.0}, ask_event=0, tell_event=1),
            m.Trial(campaign_id=old, hpo="painn", family="painn", number=1, status="failed", objective=None,
                    config={"hidden": 16, "layers": 1, "lr": 1e-2, "cutoff": 5.0}, ask_event=0, tell_event=2),
            m.Trial(campaign_id=old, hpo="painn", family="painn", number=2, status="pruned", objective=3.0,
                    config={"hidden": 128, "layers": 2, "lr": 1e-3, "cutoff": 5.0}, ask_event=2, tell_event=3),
            m.Trial(campaign_id=old, hpo="painn", family="painn", number=3, status="asked",
                    config={"hidden": 16, "layers": 3, "lr": 1e-3, "cutoff": 5.0}, ask_event=2),
        ])
    recipe = parse_recipe("""\
campaign: new
datasets: [{name: demo-emt, count: 8}]
stages:
  hpo:
    - name: p
      family: painn
      warm_start_from: [old/painn]
      search_space:
        hidden: {type: categorical, choices: [16, 32, 64]}
        layers: {type: int, low: 1, high: 4}
        lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
""")
    new = ledger.open_campaign(name="new", recipe_text="campaign: new", recipe_hash="b", site="local").id
    stage_row = ledger.stage(new, "hpo", "hpo")
    ctx = StageContext(recipe=recipe, ledger=ledger, campaign_id=new, stage_id=stage_row.id, workdir=tmp_path,
                       site="local")
    spec = recipe.stages.hpo[0]
    stage = HPOStage(recipe)
    opt = AskTellOptimizer(spec.search_space, 1, tmp_path / "dh")
    told = stage._warm_start(ctx, spec, opt)
    # only the successful trial inside this space: the failure, the out-of-space and the untold ones are not told
    assert [(t.config["hidden"], t.loss) for t in told] == [(32, 2.0)]
    # the snapshot is kept on the stage row: a resumed run tells the same even if the old campaign grows
    with transaction(ledger.Session) as s:
        s.add(m.Trial(campaign_id=old, hpo="painn", family="painn", number=4, status="done", objective=1.0,
                      config={"hidden": 64, "layers": 1, "lr": 1e-3, "cutoff": 5.0}, ask_event=3, tell_event=4))
    again = stage._warm_start(ctx, spec, AskTellOptimizer(spec.search_space, 1, tmp_path / "dh"))
    assert again == told
    with pytest.raises(Exception, match="no campaign named 'nowhere'"):
        stage._warm_start(ctx, spec.model_copy(update={"warm_start_from": ["nowhere/painn"], "name": "q"}), opt)


def test_the_frontier_profile_scales_trials_to_256_nodes(tmp_path: Path) -> None:
    from campaign.recipe import load_recipe
    from campaign.stages.hpo_trials import trial_task

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "hpo.yaml", profile="frontier")
    spec = recipe.stages.hpo[0]
    datasets = {d.name: {"root": f"/lustre/{d.name}", "head_id": 100 + i} for i, d in enumerate(recipe.datasets)}
    cfg = train_config(spec, {**spec.fixed, "hidden": 32, "layers": 2, "lr": 1e-3}, datasets,
                       out_dir=tmp_path / "t", seed=1, threads=None)
    task = trial_task(spec, 0, cfg, tmp_path / "t")
    assert (task.resources.nodes, task.resources.ranks_per_node, task.resources.gpus_per_rank) == (256, 8, 1)
    assert task.resources.ranks == 2048 and "device" not in cfg and "threads" not in cfg
    assert recipe.site.name == "frontier" and spec.max_trials == 64 and spec.precision == "fp64"
