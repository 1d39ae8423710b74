"""The HPO stage: several DeepHyper CBO campaigns (one per message-passing family) run side by side.

Each HPO campaign of the recipe asks its optimizer for configurations, runs each as a ``models.train`` trial task
(dispatched like any other task, so through Parsl on a site), tells results back as they arrive and asks for a
new trial whenever one of its slots frees: asynchronous, never in lockstep. Crashed, NaN and walltime trials are
told as failures with their cause. Running trials are watched through the per-epoch validation losses they write
(``metrics.jsonl``); a poor one is stopped early by the recipe's rule (median or successive halving, see
:mod:`campaign.stages.hpo_pruning`) through its stop file, and is told its best loss so far.

Resume: the database is the record of truth. Every ask and tell is stored on the trial rows in order
(``ask_event``, ``tell_event``), so a restarted driver replays the log into a fresh optimizer with the same seed
(:func:`campaign.stages.hpo_optimizer.replay`) and continues: finished trials are never re-run (task keys),
results recorded but not yet told are told, trials in flight are adopted or re-submitted by the steering loop,
and the next suggestions are those the killed driver would have made.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from campaign.errors import CampaignInputError
from campaign.recipe import HPOSpec, Recipe
from campaign.records import Checkpoint, TaskRow, TrialRow
from campaign.stages.base import PlannedTask, StageContext
from campaign.stages.hpo_export import results_rows, write_results_csv
from campaign.stages.hpo_optimizer import AskTellOptimizer, LogEvent, Told, optimizer_seed, replay
from campaign.stages.hpo_pruning import should_stop
from campaign.stages.hpo_trials import local_threads, train_config, trial_dir, trial_task
from campaign.tasks import TaskResult, TaskState
from models.appio import BadInput
from models.atomic_files import write_text_atomic
from models.contracts import app_failure
from models.contracts.train import read_result
from models.training.metrics import read_metrics, val_loss_curve

log = logging.getLogger(__name__)

SUCCEEDED = ("done", "pruned")


def task_key(hpo: str, number: int) -> str:
    """The trial task's key (unique in the campaign: a trial never runs twice)."""
    return f"hpo/{hpo}/trial-{number:04d}"


def read_val_curve(metrics_path: str | Path) -> list[float]:
    """Validation loss per epoch from a ``metrics.jsonl`` (index = epoch; a partial last line is ignored)."""
    return val_loss_curve(read_metrics(metrics_path))


@dataclass
class HPORun:
    """The live state of one HPO campaign in this driver."""

    spec: HPOSpec
    optimizer: AskTellOptimizer
    datasets: dict[str, dict[str, Any]]
    next_event: int = 0
    curves: dict[int, list[float]] = field(default_factory=dict)  # trial number -> validation losses
    running: set[int] = field(default_factory=set)
    stop_requested: set[int] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: {"done": 0, "pruned": 0, "failed": 0})
    best: float | None = None
    mismatched: list[int] = field(default_factory=list)


class HPOStage:
    """Runs every HPO campaign of the recipe concurrently through the steering loop."""

    name = "hpo"
    kind = "hpo"

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.specs: list[HPOSpec] = list(recipe.stages.hpo or [])
        self.runs: dict[str, HPORun] = {}
        self._threads = local_threads(recipe.site.name, recipe.site.workers)

    # ------------------------------------------------------------------------------------------ opening
    def start(self, ctx: StageContext) -> list[PlannedTask]:
        """Rebuild each optimizer from the database (replay), settle results not yet told, fill free slots."""
        datasets = ctx.shared.get("datasets")
        if not datasets:
            raise CampaignInputError("the hpo stage needs the preprocess stage's datasets (add stages.preprocess)")
        planned: list[PlannedTask] = []
        for spec in self.specs:
            names = spec.datasets or [d.name for d in self.recipe.datasets]
            missing = [n for n in names if n not in datasets]
            if missing:
                raise CampaignInputError(f"HPO campaign {spec.name!r}: dataset {missing[0]!r} was not preprocessed")
            run = self._open(ctx, spec, {n: datasets[n] for n in names})
            self.runs[spec.name] = run
            planned += self._settle_untold(ctx, run)
            planned += self._replan_open(ctx, run)
            planned += self._fill(ctx, run)
        return planned

    def _trials(self, ctx: StageContext, hpo: str) -> list[TrialRow]:
        return ctx.ledger.trials(ctx.campaign_id, hpo)

    def _open(self, ctx: StageContext, spec: HPOSpec, datasets: dict[str, dict[str, Any]]) -> HPORun:
        seed = optimizer_seed(self.recipe.seed, spec.seed, spec.name)
        opt = AskTellOptimizer(spec.search_space, seed, ctx.workdir / "hpo" / spec.name / "deephyper")
        run = HPORun(spec=spec, optimizer=opt, datasets=datasets)
        warm = self._warm_start(ctx, spec, opt)
        opt.tell(warm)
        trials = self._trials(ctx, spec.name)
        events: dict[tuple[int, str], list[int]] = {}
        told: dict[int, Told] = {}
        for t in trials:
            if t.ask_event is not None:
                events.setdefault((t.ask_event, "ask"), []).append(t.number)
            if t.tell_event is not None:
                events[(t.tell_event, "tell")] = [t.number]
                told[t.number] = self._told_of(t)
        log_events = [LogEvent(pos, kind, tuple(sorted(nums))) for (pos, kind), nums in events.items()]
        run.mismatched = replay(opt, log_events, {t.number: t.config for t in trials}, told)
        run.next_event = 1 + max([e.position for e in log_events], default=-1)
        for t in trials:
            if t.tell_event is not None:
                self._count(run, t.status, t.objective)
        run.curves.update(self._stored_curves(ctx, trials))
        return run

    @staticmethod
    def _told_of(t: TrialRow) -> Told:
        ok = t.status in SUCCEEDED and t.objective is not None and math.isfinite(t.objective)
        return Told(config=dict(t.config), loss=t.objective if ok else None, failure=None if ok else t.failure)

    def _warm_start(self, ctx: StageContext, spec: HPOSpec, opt: AskTellOptimizer) -> list[Told]:
        """Results of earlier campaigns' trials (``CAMPAIGN/HPO``) that fit this search space.

        The first time, the snapshot is stored on the stage row so that a resumed run tells exactly the same
        results even if the source campaign has grown since.
        """
        if not spec.warm_start_from:
            return []
        snapshot = (ctx.ledger.stage_config(ctx.stage_id).get("warm_start") or {}).get(spec.name)
        if snapshot is None:
            snapshot = []
            for ref in spec.warm_start_from:
                camp_name, _, hpo_name = ref.partition("/")
                camp_id = ctx.ledger.campaign_id(camp_name)
                if camp_id is None:
                    raise CampaignInputError(f"HPO campaign {spec.name!r}: warm_start_from {ref!r}: "
                                             f"no campaign named {camp_name!r} in the database")
                for t in ctx.ledger.told_trials(camp_id, hpo_name or None):
                    told = self._told_of(t)
                    if told.loss is not None and opt.fits(t.config, spec.search_space):
                        snapshot.append({"config": dict(t.config), "loss": told.loss, "from": f"{ref}#{t.number}"})
            ws = dict(ctx.ledger.stage_config(ctx.stage_id).get("warm_start") or {})
            ctx.ledger.update_stage_config(ctx.stage_id, warm_start={**ws, spec.name: snapshot})
        return [Told(config=w["config"], loss=float(w["loss"])) for w in snapshot]

    def _stored_curves(self, ctx: StageContext, trials: list[TrialRow]) -> dict[int, list[float]]:
        by_task = {t.task_id: t.number for t in trials if t.task_id and t.tell_event is not None}
        curves = ctx.ledger.val_loss_curves(list(by_task))
        return {by_task[tid]: [c[e] for e in sorted(c)] for tid, c in curves.items()}

    # ------------------------------------------------------------------------------------ asking
    def _fill(self, ctx: StageContext, run: HPORun) -> list[PlannedTask]:
        """Ask for as many new trials as the campaign has free slots (and budget) for."""
        spec = run.spec
        trials = self._trials(ctx, spec.name)
        open_trials = [t for t in trials if t.tell_event is None]
        n = min(spec.trials_in_flight - len(open_trials), spec.max_trials - len(trials))
        if n <= 0:
            return []
        configs = run.optimizer.ask(n)
        event = run.next_event
        run.next_event += 1
        first = len(trials)
        planned = []
        for i, searched in enumerate(configs):
            number = first + i
            hp = {**spec.fixed, **searched}
            planned.append(self._create_trial(ctx, run, number, hp, event))
        ready = [p for p in planned if p is not None]
        if len(ready) < len(planned):  # refused configurations were told as failures: ask for others
            ready += self._fill(ctx, run)
        return ready

    def _create_trial(self, ctx: StageContext, run: HPORun, number: int, hp: dict[str, Any],
                      event: int) -> PlannedTask | None:
        """The trial's task, or None when its configuration is refused (told as a failure, never run)."""
        spec = run.spec
        out = trial_dir(ctx.workdir, spec.name, number)
        seed = optimizer_seed(self.recipe.seed, spec.seed, spec.name, number)
        try:
            cfg = train_config(spec, hp, run.datasets, out_dir=out, seed=seed, threads=self._threads)
        except BadInput as exc:  # a combination the family's schema refuses (each value alone was checked)
            ctx.ledger.ask_trial(ctx.campaign_id, hpo=spec.name, family=spec.family, number=number, config=hp,
                                 task_id=None, ask_event=event)
            self._tell_failure(ctx, run, number, "bad_config", str(exc))
            return None
        planned = PlannedTask(task_key(spec.name, number), trial_task(spec, number, cfg, out))
        # the task first (idempotent by key), then the trial row that points at it and logs the ask
        task = ctx.ledger.create_task(ctx.campaign_id, ctx.stage_id, planned.key, planned.spec)
        ctx.ledger.ask_trial(ctx.campaign_id, hpo=spec.name, family=spec.family, number=number, config=hp,
                             task_id=task.id, ask_event=event, inputs=[("dataset", d["dataset_id"]) for d in run.datasets.values()])
        return planned

    def _replan_open(self, ctx: StageContext, run: HPORun) -> list[PlannedTask]:
        """Open trials whose task row is missing (the driver died between the two writes) get it back."""
        planned = []
        for t in self._trials(ctx, run.spec.name):
            if t.tell_event is None and t.task_id is None:
                out = trial_dir(ctx.workdir, run.spec.name, t.number)
                seed = optimizer_seed(self.recipe.seed, run.spec.seed, run.spec.name, t.number)
                try:
                    cfg = train_config(run.spec, t.config, run.datasets, out_dir=out, seed=seed,
                                       threads=self._threads)
                except BadInput as exc:  # refused when asked; the driver died before telling it
                    self._tell_failure(ctx, run, t.number, "bad_config", str(exc))
                    continue
                p = PlannedTask(task_key(run.spec.name, t.number), trial_task(run.spec, t.number, cfg, out))
                task = ctx.ledger.create_task(ctx.campaign_id, ctx.stage_id, p.key, p.spec)
                ctx.ledger.set_trial_task(t.id, task.id)
                planned.append(p)
        return planned

    # ------------------------------------------------------------------------------------ telling
    def _settle_untold(self, ctx: StageContext, run: HPORun) -> list[PlannedTask]:
        """Trials whose task finished but whose result was never told (the driver died in between)."""
        planned: list[PlannedTask] = []
        for t in self._trials(ctx, run.spec.name):
            if t.tell_event is not None or t.task_id is None:
                continue
            task = ctx.ledger.task(t.task_id)
            state, result = (task.state, task.result) if task else (None, None)
            last = ctx.ledger.last_attempt(t.task_id)
            cause = (last.exit_cause if last is not None else None) or "error"
            error = last.error if last is not None else None
            if state == TaskState.DONE:
                self._tell_success(ctx, run, t.number, t.task_id, result or {})
            elif state in (TaskState.FAILED, TaskState.CANCELLED):
                failure = app_failure(result)
                self._tell_failure(ctx, run, t.number, cause, failure.reason if failure else error)
        return planned

    def _trial_of(self, ctx: StageContext, task_id: str) -> tuple[HPORun, TrialRow] | None:
        found = ctx.ledger.trials_of_tasks(ctx.campaign_id, [task_id])
        if not found or found[0].hpo not in self.runs:
            return None
        return self.runs[found[0].hpo], found[0]

    def on_done(self, ctx: StageContext, task: TaskRow, result: TaskResult) -> list[PlannedTask]:
        """Tell the trial's best-epoch validation loss (a non-finite one is a failure), then ask again."""
        found = self._trial_of(ctx, task.id)
        if found is None:
            return []
        run, trial = found
        if trial.tell_event is None:
            self._tell_success(ctx, run, trial.number, task.id, result.result or {})
        return self._fill(ctx, run)

    def on_failed(self, ctx: StageContext, task: TaskRow, result: TaskResult | None) -> list[PlannedTask]:
        """Tell the trial as failed with its cause (crash, NaN, walltime, lost node), then ask again."""
        found = self._trial_of(ctx, task.id)
        if found is None:
            return []
        run, trial = found
        if trial.tell_event is None:
            cause = result.exit_cause.value if result is not None else "error"
            failure = app_failure(result.result) if result is not None else None
            detail = failure.reason if failure else (result.error if result else None)
            self._tell_failure(ctx, run, trial.number, cause, detail)
        return self._fill(ctx, run)

    def _tell_success(self, ctx: StageContext, run: HPORun, number: int, task_id: str,
                      payload: dict[str, Any]) -> None:
        try:
            res = read_result(payload, f"result of trial {number} of HPO {run.spec.name!r}")
        except BadInput as exc:  # an app that does not keep its contract: the trial failed, the campaign goes on
            self._tell_failure(ctx, run, number, "bad_result", str(exc))
            return
        if res.objective is None or not math.isfinite(res.objective):
            self._tell_failure(ctx, run, number, "error", f"nan: objective is {res.objective}")
            return
        status = "pruned" if res.stop_reason == "stopped" else "done"
        rows = [r.model_dump() for r in res.history]
        best = res.checkpoints.get("best")
        metrics = res.model_dump(mode="json", include={
            "best_val_metrics", "train_graphs_per_s", "stop_reason", "checkpoints", "world_size", "precision",
            "n_params", "last_epoch", "steps", "peak_memory_bytes", "completed"})
        event = run.next_event
        run.next_event += 1
        # the trial's result, metrics, checkpoint and lineage: one transaction
        trial = ctx.ledger.tell_trial(
            ctx.campaign_id, run.spec.name, number, status=status, tell_event=event, objective=res.objective,
            best_epoch=res.best_epoch, metrics=metrics, wall_time_s=res.wall_time_s, task_id=task_id,
            metric_rows=rows, checkpoint=Checkpoint(best.path, best.sha256) if best else None)
        config = dict(trial.config)
        # told only once recorded: a kill between the two leaves a recorded tell that replay repeats
        run.optimizer.tell([Told(config=config, loss=res.objective)])
        run.curves[number] = val_loss_curve(rows)
        run.running.discard(number)
        self._count(run, status, res.objective)

    def _tell_failure(self, ctx: StageContext, run: HPORun, number: int, cause: str, detail: str | None) -> None:
        text = f"{cause}: {detail}" if detail else cause
        event = run.next_event
        run.next_event += 1
        trial = ctx.ledger.tell_trial(ctx.campaign_id, run.spec.name, number, status="failed", tell_event=event,
                                      failure=text[:4000])
        config = dict(trial.config)
        run.optimizer.tell([Told(config=config, loss=None, failure=text)])
        run.running.discard(number)
        self._count(run, "failed", None)

    @staticmethod
    def _count(run: HPORun, status: str, objective: float | None) -> None:
        run.counts[status if status in run.counts else "failed"] += 1
        if objective is not None and math.isfinite(objective) and (run.best is None or objective < run.best):
            run.best = objective

    # ----------------------------------------------------------------------------------- watching
    def poll(self, ctx: StageContext, running: list[TaskRow]) -> list[PlannedTask]:
        """Read running trials' learning curves; ask poor ones to stop (the recipe's early-stopping rule)."""
        by_task = {t.id: t for t in running if t.kind == "trial"}
        if not by_task:
            return []
        trials = ctx.ledger.trials_of_tasks(ctx.campaign_id, list(by_task))
        newly_running = []
        for t in trials:
            run = self.runs.get(t.hpo)
            if run is None or t.tell_event is not None:
                continue
            if t.status == "asked":
                newly_running.append(t.id)
            run.running.add(t.number)
            task = by_task[str(t.task_id)]
            curve = read_val_curve(Path(task.spec["config"]["output_dir"]) / "metrics.jsonl")
            if not curve or curve == run.curves.get(t.number) or t.number in run.stop_requested:
                continue
            run.curves[t.number] = curve
            rule = run.spec.early_stopping
            peers = [c for n, c in run.curves.items() if n != t.number]
            if should_stop(rule.rule, curve, peers, min_epochs=rule.min_epochs, eta=rule.reduction_factor,
                           max_epochs=run.spec.epochs, min_peers=rule.min_peers):
                stop = Path(task.spec["config"]["stop_file"])
                write_text_atomic(stop, f"stopped by the {rule.rule} rule after epoch {len(curve) - 1}\n")
                run.stop_requested.add(t.number)
                log.info("HPO %s: stopping trial %d early (%s rule, epoch %d)", t.hpo, t.number, rule.rule,
                         len(curve) - 1)
        if newly_running:
            ctx.ledger.mark_trials_running(newly_running)
        return []

    def sub_progress(self) -> list[dict[str, Any]]:
        """One row per HPO campaign for the live display: trials done / running / failed and the best loss."""
        rows = []
        for name, run in self.runs.items():
            rows.append({"name": f"hpo/{name}", "done": run.counts["done"] + run.counts["pruned"],
                         "failed": run.counts["failed"], "running": len(run.running),
                         "pruned": run.counts["pruned"], "best": run.best,
                         "planned": run.spec.max_trials})
        return rows

    # ------------------------------------------------------------------------------------ finishing
    def finish(self, ctx: StageContext) -> str:
        """Export each campaign's trials as DeepHyper ``results.csv``; ``done`` when every campaign has a result."""
        ok, any_success = True, False
        shared: dict[str, list[int]] = {}
        for spec in self.specs:
            trials = self._trials(ctx, spec.name)
            shared[spec.name] = [t.id for t in trials]
            attempts = {}
            for t in trials:
                a = ctx.ledger.last_attempt(t.task_id) if t.task_id else None
                if t.task_id and a is not None:
                    attempts[t.task_id] = (a.started_at, a.ended_at)
            rows = results_rows(trials, sorted(spec.search_space), attempts)
            path = write_results_csv(ctx.workdir / "hpo" / spec.name / "results.csv", rows)
            art = ctx.ledger.add_artifact(path, "hpo-results")
            ctx.ledger.link("output_of", ("artifact", art.id), ("campaign", ctx.campaign_id), ctx.campaign_id)
            if not any(t.status in SUCCEEDED for t in trials):
                log.warning("HPO campaign %s: no trial succeeded", spec.name)
            else:
                any_success = True
            if any(t.tell_event is None for t in trials):
                ok = False  # a trial neither finished nor failed: the stage is not over
        ctx.shared["hpo"] = shared
        return "done" if ok and any_success else "failed"
