"""The promote stage: rank every HPO trial of the campaign and turn the chosen ones into models.

No task runs: :meth:`PromoteStage.finish` reads the campaign's trials from the database, ranks the eligible ones
(``done`` or ``pruned`` with a finite objective) across all HPO campaigns with :mod:`campaign.ranking`, applies
the recipe's rule (``top_overall`` k, ``best_per_family``, optional Pareto front of objective versus cost) and
records, for each selected trial:

* a ``models`` row, role ``promoted``: family, hyperparameters (the trial's config), the trial's best checkpoint
  artifact, the trial and its task, and ``metrics`` = ``{objective, rank, reasons, …}``;
* lineage ``promoted_from`` (model -> trial).

The ``ensemble_k`` best promoted models are recorded as an ``ensembles`` row named ``<campaign>-top<k>``.
Everything is idempotent: finishing again (a resumed run) updates the same rows and adds none. Models promoted
by an earlier finish that the rule no longer selects (the HPO stage ran more trials since) stay in the
database with ``metrics.selected = false``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from campaign.ranking import Rule, Selection, TrialRecord, select, top_k
from campaign.stages.base import PlannedTask, StageContext
from campaign.tasks import TaskResult


def _record(trial: Any) -> TrialRecord:
    metrics = trial.metrics or {}
    n_params = metrics.get("n_params")
    return TrialRecord(id=trial.id, hpo=trial.hpo, family=trial.family, status=trial.status,
                       objective=trial.objective, wall_time_s=trial.wall_time_s,
                       n_params=int(n_params) if n_params is not None else None)


def _failure_summary(trials: list[Any]) -> str:
    counts: dict[str, int] = {}
    for t in trials:
        bad = t.objective is None or not math.isfinite(t.objective)
        key = f"{t.status} without a finite objective" if bad and t.status in ("done", "pruned") else t.status
        counts[key] = counts.get(key, 0) + 1
    causes = sorted({t.failure.strip().splitlines()[-1][:200] for t in trials if t.failure and t.failure.strip()})
    text = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    return text + (f"; causes: {'; '.join(causes[:3])}" if causes else "")


class PromoteStage:
    """Selects HPO trials by the recipe's rule and records them as promoted models and an ensemble."""

    name = "promote"
    kind = "promote"

    def __init__(self, recipe: Any) -> None:
        self.recipe = recipe
        self.spec = recipe.stages.promote
        self.note = ""  # why the stage failed, when it did

    @property
    def rule(self) -> Rule:
        """The recipe's promotion rule."""
        p = self.spec
        return Rule(top_overall=p.top_overall, best_per_family=p.best_per_family, pareto=p.pareto,
                    pareto_cost=p.pareto_cost)

    # ------------------------------------------------------------------------------- stage protocol
    def start(self, ctx: StageContext) -> list[PlannedTask]:
        """Nothing to run: promotion is bookkeeping done in :meth:`finish`."""
        return []

    def on_done(self, ctx: StageContext, task: Any, result: TaskResult) -> list[PlannedTask]:
        """Never called (no tasks)."""
        return []

    def on_failed(self, ctx: StageContext, task: Any, result: TaskResult | None) -> list[PlannedTask]:
        """Never called (no tasks)."""
        return []

    def poll(self, ctx: StageContext, running: list[Any]) -> list[PlannedTask]:
        """Nothing to watch."""
        return []

    def finish(self, ctx: StageContext) -> str:
        """Rank, select and record; ``failed`` (with :attr:`note`) when no trial has a usable objective."""
        trials = ctx.ledger.trials(ctx.campaign_id)
        if not trials:
            return self._fail(ctx, f"campaign {self.recipe.campaign!r} has no HPO trials to promote "
                                   "(no hpo stage ran, or it recorded nothing)")
        chosen = select([_record(t) for t in trials], self.rule)
        if not chosen:
            return self._fail(ctx, f"no trial of campaign {self.recipe.campaign!r} finished with a finite "
                                   f"objective ({len(trials)} trials: {_failure_summary(trials)})")
        by_id = {t.id: t for t in trials}
        model_ids = [self._promote(ctx, by_id[sel.trial.id], sel) for sel in chosen]
        self._retire_unselected(ctx, set(model_ids))
        ensemble = top_k(chosen, self.spec.ensemble_k)
        ens_models = [model_ids[chosen.index(sel)] for sel in ensemble]
        ctx.shared["promoted"] = model_ids
        ctx.shared["ensemble"] = self._ensemble(ctx, ens_models, ensemble)
        return "done"

    # ------------------------------------------------------------------------------------ recording
    def _fail(self, ctx: StageContext, reason: str) -> str:
        self.note = reason  # recorded on the stage by the steering loop as its failure reason
        return "failed"

    def _checkpoint_id(self, ctx: StageContext, trial: Any) -> int | None:
        """The trial's best-checkpoint artifact: the one the HPO stage recorded, else registered here when the
        file named in the trial's metrics still exists with its recorded sha256."""
        from models.atomic_files import sha256_file

        best = ((trial.metrics or {}).get("checkpoints") or {}).get("best") or {}
        path, digest = best.get("path"), best.get("sha256")
        if path:
            found = ctx.ledger.find_artifact(str(path), digest)
            if found is not None:
                return found
        if trial.task_id is not None:
            rows = ctx.ledger.artifacts_of_task(trial.task_id, "checkpoint")
            named = [a for a in rows if Path(a.path).name == "best.pt"] or rows
            if named:
                return int(named[-1].id)
        if path and Path(path).is_file() and (digest is None or sha256_file(path) == digest):
            art = ctx.ledger.add_artifact(path, "checkpoint", task_id=trial.task_id, sha256=digest)
            if trial.task_id is not None:
                ctx.ledger.link("output_of", ("artifact", art.id), ("task", trial.task_id), ctx.campaign_id)
            return int(art.id)
        return None

    def _promote(self, ctx: StageContext, trial: Any, sel: Selection) -> int:
        ckpt = self._checkpoint_id(ctx, trial)
        tm = trial.metrics or {}
        metrics = {
            "objective": trial.objective, "rank": sel.rank, "reasons": list(sel.reasons), "selected": True,
            "hpo": trial.hpo, "trial_number": trial.number, "best_epoch": trial.best_epoch,
            "trial_status": trial.status, "wall_time_s": trial.wall_time_s, "n_params": tm.get("n_params"),
            "best_val_metrics": tm.get("best_val_metrics"), "rule": self.spec.model_dump(mode="json"),
        }
        model_id = ctx.ledger.save_model(
            {"campaign_id": ctx.campaign_id, "role": "promoted", "trial_id": trial.id},
            create={"name": f"{trial.hpo}-trial{trial.number}", "family": trial.family,
                    "hyperparameters": dict(trial.config or {}), "task_id": trial.task_id},
            update={"checkpoint_id": ckpt, "metrics": metrics})
        ctx.ledger.link("promoted_from", ("model", model_id), ("trial", trial.id), ctx.campaign_id)
        return model_id

    def _retire_unselected(self, ctx: StageContext, keep: set[int]) -> None:
        ctx.ledger.retire_promoted(ctx.campaign_id, keep)

    def _ensemble(self, ctx: StageContext, model_ids: list[int], members: list[Selection]) -> int:
        name = f"{self.recipe.campaign}-top{len(model_ids)}"
        rule = {"kind": "top_k_promoted", "k": self.spec.ensemble_k, "size": len(model_ids),
                "by": "objective", "trial_ids": [sel.trial.id for sel in members],
                "objectives": [sel.trial.objective for sel in members]}
        return ctx.ledger.save_ensemble(ctx.campaign_id, name, model_ids, rule)
