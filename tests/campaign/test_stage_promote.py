"""The promote stage on a campaign database holding real trials (real 1-epoch models.train runs on EMT data).

The trial rows follow the HPO stage's contract: a ``trial`` task whose spec config is the complete
``models.train`` config and whose result is the run's result, a ``trials`` row, the best checkpoint as an
artifact ``output_of`` the task, and the per-epoch metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from campaign.dispatch import make_dispatcher
from campaign.dispatch.failures import RetryPolicy
from campaign.ledger import Ledger
from campaign.recipe import Recipe, parse_recipe
from campaign.stages.base import StageContext
from campaign.steer import Steerer
from campaign.taskqueue import TaskQueue
from campaign.tasks import ExitCause, TaskResult, TaskSpec, utcnow
from db import models as m
from db.engine import transaction

TINY = {"hidden": 8, "layers": 1, "cutoff": 4.0, "num_rbf": 6, "heads": [0, 1], "max_z": 80}


@dataclass
class TrialRun:
    """One real training run standing for an HPO trial."""

    hpo: str
    family: str
    number: int
    status: str  # done | pruned | failed
    config: dict[str, Any]  # the models.train config (the trial task's spec config)
    hyper: dict[str, Any]  # the searched + fixed hyperparameters (trials.config)
    result: dict[str, Any] | None  # the run's result (None for a failed trial)


#: (hpo, family, hidden, lr, status) of the trials; the third painn trial crashes.
TRIAL_PLAN = [
    ("painn", "painn", 8, 5e-3, "done"),
    ("painn", "painn", 12, 2e-3, "pruned"),
    ("schnet", "schnet", 8, 5e-3, "done"),
]


def run_trials(base: Path) -> list[TrialRun]:
    """Train the trials of :data:`TRIAL_PLAN` for one epoch each (in this process) on a tiny EMT store."""
    import torch

    from models.contracts.train import parse_config
    from models.train import run
    from tests.models.train.emt_data import demo_root

    torch.set_num_threads(1)
    root = demo_root(base / "stores", n_train=8, n_val=4, n_test=2)
    runs = []
    for k, (hpo, family, hidden, lr, status) in enumerate(TRIAL_PLAN):
        cfg = {"data_root": str(root), "datasets": ["metals", "molecules"], "batch_size": 4,
               "model": {**TINY, "family": family, "hidden": hidden}, "optimizer": {"lr": lr}, "epochs": 1,
               "precision": "fp64", "output_dir": str(base / "trials" / f"{hpo}-{k}"), "seed": k,
               "device": "cpu", "threads": 1}
        res = run(parse_config(cfg, "trial.json"), "trial.json")
        runs.append(TrialRun(hpo, family, k, status, cfg, {"hidden": hidden, "layers": 1, "lr": lr, "cutoff": 4.0},
                             res))
    runs.append(TrialRun("painn", "painn", 9, "failed", {**runs[0].config, "output_dir": str(base / "x")},
                         {"hidden": 32, "layers": 3, "lr": 0.5, "cutoff": 4.0}, None))
    return runs


@pytest.fixture(scope="module")
def trial_runs(tmp_path_factory: pytest.TempPathFactory) -> list[TrialRun]:
    """The real trial runs, trained once for this module."""
    return run_trials(tmp_path_factory.mktemp("trials"))


def add_trials(ledger: Ledger, campaign_id: int, runs: list[TrialRun], workdir: Path) -> list[int]:
    """Record ``runs`` as the HPO stage does (tasks, attempts, trials, checkpoints, lineage, metrics)."""
    from models.training.metrics import read_metrics

    stage = ledger.stage(campaign_id, "hpo", "hpo")
    ids = []
    for r in runs:
        spec = TaskSpec(kind="trial", app="models.train", config=r.config,
                        workdir=str(workdir / "hpo" / r.hpo / f"trial-{r.number}"))
        task = ledger.create_task(campaign_id, stage.id, f"hpo/{r.hpo}/trial-{r.number}", spec)
        n = ledger.begin_attempt(task.id, site="local", executor="local")
        ok = r.result is not None
        ledger.record_attempt(TaskResult(task_id=task.id, attempt=n, exit_cause=ExitCause.OK if ok else ExitCause.ERROR,
                                         result={"status": "ok", **r.result} if ok else None,
                                         error=None if ok else "nan: validation loss is nan at epoch 0",
                                         started_at=utcnow(), ended_at=utcnow()), policy=RetryPolicy(0, 0))
        res = r.result or {}
        with transaction(ledger.Session) as s:
            trial = m.Trial(campaign_id=campaign_id, hpo=r.hpo, family=r.family, number=r.number, config=r.hyper,
                            objective=res.get("objective"), best_epoch=res.get("best_epoch"), status=r.status,
                            failure=None if ok else "RunFailed: validation loss is nan at epoch 0",
                            task_id=task.id, wall_time_s=res.get("wall_time_s"), finished_at=utcnow(),
                            metrics={k: res[k] for k in ("best_val_metrics", "train_graphs_per_s", "stop_reason",
                                                         "checkpoints", "world_size", "precision", "n_params")}
                            if ok else None)
            s.add(trial)
            s.flush()
            ids.append(trial.id)
        if ok:
            best = res["checkpoints"]["best"]
            art = ledger.add_artifact(best["path"], "checkpoint", task_id=task.id, sha256=best["sha256"])
            ledger.link("output_of", ("artifact", art.id), ("task", task.id), campaign_id)
            rows = read_metrics(res["metrics_path"])
            ledger.add_metrics(task.id, rows)
    ledger.finish_stage(stage.id, "done")
    return ids


def hpo_campaign(engine: Any, name: str, runs: list[TrialRun], workdir: Path) -> tuple[Ledger, int]:
    """A campaign whose HPO stage left ``runs`` in the database."""
    ledger = Ledger(engine)
    cid = ledger.open_campaign(name=name, recipe_text=f"campaign: {name}", recipe_hash=name, site="local").id
    add_trials(ledger, cid, runs, workdir)
    return ledger, cid


def run_stage(ledger: Ledger, cid: int, recipe: Recipe, kind: str, workdir: Path,
              shared: dict[str, Any] | None = None, dispatch: dict[str, Any] | None = None) -> tuple[str, Any]:
    """Run the recipe's ``kind`` stage through the Steerer with a local dispatcher; ``(status, stage)``."""
    from campaign.stages import build_stages

    stage = dict(build_stages(recipe))[kind]
    assert stage is not None, f"stage {kind} not available"
    row = ledger.stage(cid, kind, kind)
    ctx = StageContext(recipe=recipe, ledger=ledger, campaign_id=cid, stage_id=row.id, workdir=workdir,
                       site="local", shared={} if shared is None else shared)
    dispatcher = make_dispatcher("local", {"max_workers": 1, **(dispatch or {})}, workdir / "dispatch")
    try:
        steer = Steerer(TaskQueue(ledger, cid, site="local", executor=dispatcher.name), dispatcher, max_in_flight=1)
        status = steer.run_stage(stage, ctx)
    finally:
        dispatcher.shutdown()
    return status, (stage, ctx)


def _recipe(name: str, promote: str = "{top_overall: 1, best_per_family: true, ensemble_k: 2}") -> Recipe:
    return parse_recipe(f"campaign: {name}\nstages:\n  promote: {promote}\n")


def _count(ledger: Ledger, model: Any) -> int:
    with ledger.Session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_promotes_top_overall_and_best_of_each_family(engine: Any, trial_runs: list[TrialRun],
                                                      tmp_path: Path) -> None:
    ledger, cid = hpo_campaign(engine, "promo", trial_runs, tmp_path)
    status, (stage, ctx) = run_stage(ledger, cid, _recipe("promo"), "promote", tmp_path)
    assert status == "done", stage.note
    with ledger.Session() as s:
        trials = list(s.scalars(select(m.Trial).order_by(m.Trial.id)))
        models = {mo.id: mo for mo in s.scalars(select(m.Model))}
        lineage = {(e.kind.value, e.src_kind.value, e.src_id, e.dst_kind.value, e.dst_id)
                   for e in s.scalars(select(m.Lineage))}
        ensembles = list(s.scalars(select(m.Ensemble)))
        arts = {a.id: a for a in s.scalars(select(m.Artifact))}
    scored = sorted((t for t in trials if t.status in ("done", "pruned")), key=lambda t: t.objective)
    best_of = {f: min((t for t in scored if t.family == f), key=lambda t: t.objective) for f in ("painn", "schnet")}
    expected = {scored[0].id} | {t.id for t in best_of.values()}
    assert {mo.trial_id for mo in models.values()} == expected
    assert ctx.shared["promoted"] == [mo.id for mo in sorted(models.values(), key=lambda mo: mo.metrics["rank"])]
    for mo in models.values():
        trial = next(t for t in trials if t.id == mo.trial_id)
        assert mo.role == "promoted" and mo.family == trial.family and mo.hyperparameters == trial.config
        assert mo.task_id == trial.task_id and mo.metrics["objective"] == trial.objective
        assert mo.metrics["rank"] == scored.index(trial) + 1
        reasons = set(mo.metrics["reasons"])
        assert ("top_overall" in reasons) == (trial.id == scored[0].id)
        assert ("best_of_family" in reasons) == (trial.id == best_of[trial.family].id)
        assert arts[mo.checkpoint_id].path == trial.metrics["checkpoints"]["best"]["path"]
        assert ("promoted_from", "model", str(mo.id), "trial", str(trial.id)) in lineage
    # the ensemble: the two best promoted models, best first
    assert len(ensembles) == 1 and ensembles[0].name == "promo-top2" and ctx.shared["ensemble"] == ensembles[0].id
    top2 = sorted(models.values(), key=lambda mo: mo.metrics["objective"])[:2]
    assert ensembles[0].model_ids == [mo.id for mo in top2]
    assert ensembles[0].rule["k"] == 2 and ensembles[0].rule["trial_ids"] == [mo.trial_id for mo in top2]

    # finishing again (a resumed run) adds nothing and gives the same outputs
    counts = (_count(ledger, m.Model), _count(ledger, m.Ensemble), _count(ledger, m.Lineage))
    again, (_, ctx2) = run_stage(ledger, cid, _recipe("promo"), "promote", tmp_path)
    assert again == "done"
    assert (_count(ledger, m.Model), _count(ledger, m.Ensemble), _count(ledger, m.Lineage)) == counts
    assert ctx2.shared["promoted"] == ctx.shared["promoted"] and ctx2.shared["ensemble"] == ctx.shared["ensemble"]


def test_pareto_promotion_and_a_rule_that_no_longer_selects(engine: Any, trial_runs: list[TrialRun],
                                                            tmp_path: Path) -> None:
    ledger, cid = hpo_campaign(engine, "pareto", trial_runs, tmp_path)
    rule = "{top_overall: 1, best_per_family: false, pareto: true, pareto_cost: n_params, ensemble_k: 5}"
    status, (stage, _) = run_stage(ledger, cid, _recipe("pareto", rule), "promote", tmp_path)
    assert status == "done", stage.note
    with ledger.Session() as s:
        trials = [t for t in s.scalars(select(m.Trial)) if t.objective is not None]
        models = list(s.scalars(select(m.Model)))
        ens = s.scalar(select(m.Ensemble))
    front = {t.id for t in trials
             if not any(o.objective <= t.objective and o.metrics["n_params"] <= t.metrics["n_params"]
                        and (o.objective < t.objective or o.metrics["n_params"] < t.metrics["n_params"])
                        for o in trials)}
    assert {mo.trial_id for mo in models if "pareto" in mo.metrics["reasons"]} == front
    assert ens is not None and ens.name == f"pareto-top{len(models)}" and len(ens.model_ids) == len(models)
    # the same campaign promoted again with a narrower rule: earlier models stay, marked unselected
    narrow = _recipe("pareto", "{top_overall: 1, best_per_family: false, ensemble_k: 1}")
    assert run_stage(ledger, cid, narrow, "promote", tmp_path)[0] == "done"
    with ledger.Session() as s:
        selected = [mo.trial_id for mo in s.scalars(select(m.Model)) if mo.metrics["selected"]]
    assert selected == [min(trials, key=lambda t: t.objective).id]


def test_a_campaign_where_every_trial_failed_fails_with_the_cause(engine: Any, trial_runs: list[TrialRun],
                                                                  tmp_path: Path) -> None:
    failed = [r for r in trial_runs if r.result is None]
    ledger, cid = hpo_campaign(engine, "allfail", failed, tmp_path)
    status, (stage, _) = run_stage(ledger, cid, _recipe("allfail"), "promote", tmp_path)
    assert status == "failed"
    assert "no trial of campaign 'allfail' finished with a finite objective" in stage.note
    assert "1 failed" in stage.note and "validation loss is nan" in stage.note
    with ledger.Session() as s:
        row = s.scalar(select(m.Stage).where(m.Stage.campaign_id == cid, m.Stage.name == "promote"))
        assert row is not None and row.status == "failed" and row.config["failure"] == stage.note
        assert s.scalar(select(func.count()).select_from(m.Model)) == 0


def test_no_trials_at_all(engine: Any, tmp_path: Path) -> None:
    ledger = Ledger(engine)
    cid = ledger.open_campaign(name="empty", recipe_text="campaign: empty", recipe_hash="e", site="local").id
    status, (stage, _) = run_stage(ledger, cid, _recipe("empty"), "promote", tmp_path)
    assert status == "failed" and "has no HPO trials" in stage.note


def test_promote_rule_that_selects_nothing_is_refused() -> None:
    from campaign.recipe import RecipeError

    with pytest.raises(RecipeError, match="selects nothing"):
        _recipe("x", "{top_overall: 0, best_per_family: false}")
