"""The active stage: closed-loop discovery — screen, pick by an acquisition rule, label with real physics,
fine-tune, evaluate, screen again.

It starts from an ensemble (the newest of this campaign or of ``from_campaign`` — the promoted one, or an earlier
loop's last round, whose pre-training data is found through the models' parents — or model ids) trained on
``dataset`` among others, and runs rounds ``1 … stop.rounds`` unattended. Every step is a campaign task with a
key, so nothing runs twice and a killed driver resumes where it stood (the plan is a pure function of the tasks
already done and their recorded results; the starting models are pinned in the stage's ``config.initial_models``
on first start, since the newest ensemble is later the loop's own):

* ``active/heldout/label``, ``active/heldout/data``: the held-out set (pool indices ``structures … structures +
  heldout - 1``: the pool's distribution, never selected), labelled once and built into a test-only store with
  the dataset's element references and graph settings;
* ``active/r00/evaluate/m<j>``: every starting member on the held-out set and the base datasets' test splits;
* per round ``r``: ``active/rNN/screen/<shard>`` (the pool, ranked by the rule's score, the indices labelled in
  earlier rounds excluded); the round's selection (the best ``batch`` of the merged shards, optionally spread over
  compositions) recorded as ``screening_hits`` (``data.purpose = "selection"``, ``data.round``);
  ``active/rNN/label`` (the method on the selection: :mod:`models.label`; every outcome a ``labels`` row, failures
  with their cause); ``active/rNN/data`` (dataset version ``r``: the labels of rounds ``1 … r`` in train/val, the
  held-out set as test; a ``datasets`` row with its content hash, ``derived_from`` the previous version);
  ``active/rNN/finetune/m<j>`` (member ``j`` fine-tuned from its previous-round model on version ``r``, with
  replay of the pre-training data; a ``models`` row, ``finetuned_from`` its parent, and the round's ensemble
  ``active-rNN``); ``active/rNN/evaluate/m<j>`` (held-out and base test errors, meV/atom and meV/Å);
* after each round the stop rule (rounds, held-out force target, patience) is applied to the recorded errors;
* ``active/final/screen/<shard>``: discovery with the final models by energy per atom; the top ``top_k`` hits.

Lineage: hit ``input_of`` label task, label extxyz artifact ``output_of`` it and ``input_of`` the data task,
dataset version ``output_of`` the data task, dataset and parent model ``input_of`` each fine-tune, model
``output_of`` it, model ``input_of`` the screens and evaluations that used it. The named queries
``active_hit_lineage`` and ``active_rounds`` read it back (:mod:`db.queries`).

``ctx.shared["active"]`` = ``{"rounds": [{round, heldout_force_mae_mev_per_a, …}], "stopped": reason,
"hits": [hit ids], "models": [final model ids]}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from campaign.errors import CampaignInputError
from campaign.stages.base import PlannedTask, StageContext, app_config, app_task_config, shard_ranges
from campaign.stages.evaluate import FIGURES
from campaign.stages.screen import ModelCheckpoint, hit_row, model_checkpoint, resolve_models, training_config
from campaign.tasks import TaskResult, TaskSpec, TaskState
from models.appio import BadInput
from models.contracts.evaluate import EvaluateConfig
from models.contracts.evaluate import read_result as read_evaluation
from models.contracts.finetune import FinetuneConfig, read_prepare_result
from models.contracts.finetune import read_result as read_finetune
from models.contracts.label import LEVEL_OF_THEORY, LabelConfig
from models.contracts.label import read_result as read_labels
from models.contracts.screen import ScreenConfig, ScreenHit
from models.contracts.screen import read_result as read_screen

#: The figure the stop rule and the report follow: the members' mean held-out force MAE, meV/Å.
HELDOUT_FIGURE = "force_mae_mev_per_a"
#: Candidates considered per selected structure when the batch is spread over compositions.
DIVERSITY_POOL = 4


def key(*parts: str | int) -> str:
    """A task key of the stage: ``key(3, "label")`` -> ``active/r03/label``; strings pass as they are."""
    return "/".join(["active", *(f"r{p:02d}" if isinstance(p, int) else p for p in parts)])


@dataclass(frozen=True)
class Base:
    """What the starting models were trained on: the roots, datasets and heads of their training run, the head
    the labels feed and the store whose references and graph settings the new data shares."""

    roots: dict[str, str]
    datasets: list[str]
    heads: dict[str, int] | None
    head: int


def spread_compositions(numbers: list[list[int]], k: int) -> list[int]:
    """Greedy farthest-point choice of ``k`` of the candidates by composition.

    Args:
        numbers: Each candidate's atomic numbers, in the rule's order (the first is always kept).
        k: How many to keep.

    Returns:
        Positions into ``numbers``: the first, then each time the candidate whose element-fraction vector is
        farthest (Euclidean) from every one kept so far (ties: the earlier in the rule's order).
    """
    elements = sorted({z for zs in numbers for z in zs})
    col = {z: i for i, z in enumerate(elements)}
    x = np.zeros((len(numbers), len(elements)))
    for i, zs in enumerate(numbers):
        for z in zs:
            x[i, col[z]] += 1.0 / len(zs)
    chosen = [0] if numbers else []
    dist = np.linalg.norm(x - x[0], axis=1) if numbers else np.zeros(0)
    while len(chosen) < min(k, len(numbers)):
        dist[chosen] = -1.0
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(x - x[nxt], axis=1))
    return chosen


class ActiveStage:
    """Plans each round from what is done, records labels, dataset versions, models and round figures."""

    name = "active"
    kind = "active"

    def __init__(self, recipe: Any) -> None:
        self.recipe = recipe
        self.spec = recipe.stages.active
        self.initial: list[ModelCheckpoint] = []
        self.base: Base | None = None
        self.note = ""

    # ------------------------------------------------------------------------------------------ setup
    def _base(self, ctx: StageContext) -> Base:
        spec = self.spec
        row = ctx.ledger.model(self.initial[0].model_id)
        while True:  # a fine-tuned model (an earlier loop's) was pre-trained on what its first ancestor was
            try:
                made_by = training_config(ctx.ledger, row)
                break
            except BadInput as exc:
                if row is None or row.parent_id is None:
                    raise CampaignInputError(f"stages.active: cannot tell what model {self.initial[0].model_id} "
                                             f"was trained on: {exc}") from None
                row = ctx.ledger.model(row.parent_id)
        if spec.dataset not in made_by.datasets:
            raise CampaignInputError(f"stages.active.dataset: the models were not trained on {spec.dataset!r} "
                                     f"(they were on {', '.join(made_by.datasets)})")
        root = made_by.data_root
        roots = dict(root) if isinstance(root, Mapping) else {d: str(root) for d in made_by.datasets}
        heads = dict(made_by.dataset_heads) if made_by.dataset_heads else None
        if heads and spec.dataset in heads:
            head = heads[spec.dataset]
        else:
            from models.registry import load_registry  # stdlib + yaml only

            try:
                head = int(load_registry().get(spec.dataset).head_id)
            except KeyError:
                raise CampaignInputError(f"stages.active.dataset: no head id for {spec.dataset!r} (not in the "
                                         "registry, and the training run gave no dataset_heads)") from None
        return Base(roots=roots, datasets=list(made_by.datasets), heads=heads, head=head)

    def start(self, ctx: StageContext) -> list[PlannedTask]:
        """Resolve the starting ensemble and what it was trained on; plan what is ready."""
        spec = self.spec
        pinned = ctx.ledger.stage_config(ctx.stage_id).get("initial_models")
        if pinned:  # a resumed loop starts from the models it started from (the newest ensemble is now its own)
            self.initial = [model_checkpoint(ctx.ledger, int(i)) for i in pinned]
        elif isinstance(spec.model, list):
            self.initial = [model_checkpoint(ctx.ledger, i) for i in spec.model]
        else:
            self.initial = resolve_models(ctx, "ensemble", from_campaign=spec.from_campaign, ensemble=spec.ensemble)
        if spec.select.rule in ("uncertainty", "lcb") and len(self.initial) < 2:
            raise CampaignInputError(f"stages.active.select.rule {spec.select.rule!r}: the ensemble has one model; "
                                     "promote with ensemble_k >= 2 or list two or more model ids")
        self.base = self._base(ctx)
        if not pinned:
            ctx.ledger.update_stage_config(ctx.stage_id, initial_models=[m.model_id for m in self.initial])
        return self._advance(ctx)

    # ------------------------------------------------------------------------------------------ state
    def _done(self, ctx: StageContext) -> dict[str, Any]:
        return {t.key: t for t in ctx.ledger.tasks(ctx.campaign_id, stage_id=ctx.stage_id,
                                                     states=[TaskState.DONE])}

    def _members(self, ctx: StageContext, done: Mapping[str, Any], r: int) -> list[ModelCheckpoint]:
        """The models after round ``r`` (round 0: the starting ones), recorded from their fine-tune tasks."""
        if r == 0:
            return self.initial
        out = []
        for j in range(len(self.initial)):
            task = done[key(r, "finetune", f"m{j}")]
            rows = ctx.ledger.models(task_id=task.id)
            out.append(model_checkpoint(ctx.ledger, rows[0].id if rows else self._record_model(ctx, task)))
        return out

    def _heldout_errors(self, ctx: StageContext, done: Mapping[str, Any], r: int) -> list[float] | None:
        """Each member's held-out force MAE (meV/Å) after round ``r``, or None while an evaluation is not done."""
        out = []
        for j in range(len(self.initial)):
            task = done.get(key(r, "evaluate", f"m{j}"))
            if task is None:
                return None
            res = read_evaluation(task.result, _where(task))
            value = getattr(res.datasets.get(self._heldout_name()), HELDOUT_FIGURE, None)
            out.append(float(value) if value is not None else math.nan)
        return out

    def _stop_reason(self, errors: list[float], r: int) -> str | None:
        """Why the loop stops after round ``r`` (``errors[k]``: round ``k``'s mean held-out force MAE), or None."""
        stop = self.spec.stop
        if stop.force_mae_mev_per_a is not None and errors[r] <= stop.force_mae_mev_per_a:
            return f"held-out force MAE {errors[r]:.4g} meV/Å reached the target {stop.force_mae_mev_per_a:g}"
        if stop.patience is not None and r >= 1:
            best = int(np.nanargmin(errors[: r + 1])) if not np.isnan(errors[: r + 1]).all() else 0
            if r - best >= stop.patience:
                return f"no better held-out force MAE for {r - best} rounds (best: round {best})"
        if r >= stop.rounds:
            return f"{stop.rounds} rounds done"
        return None

    def _progress(self, ctx: StageContext, done: Mapping[str, Any]) -> tuple[list[float], int, str | None]:
        """The mean held-out errors of the rounds evaluated so far, the last such round, and why the loop stopped
        after it (None: it goes on)."""
        errors: list[float] = []
        r = 0
        while True:
            per_member = self._heldout_errors(ctx, done, r)
            if per_member is None:
                return errors, r - 1, None
            errors.append(float(np.mean(per_member)))
            reason = self._stop_reason(errors, r)
            if reason is not None:
                return errors, r, reason
            r += 1

    # ------------------------------------------------------------------------------------------ planning
    def _advance(self, ctx: StageContext) -> list[PlannedTask]:
        """The next tasks whose inputs are done, in the loop's order; only tasks not done yet are built (building
        one records what it reads: the labels behind a dataset version, the version behind a fine-tune), and
        ones already planned and running are ignored by the queue."""
        done = self._done(ctx)
        if self._failed(ctx):
            return []
        if key("heldout", "label") not in done:
            return [self._label_task(ctx, "heldout", self._heldout_indices(), ())]
        if key("heldout", "data") not in done:
            return [self._data_task(ctx, "heldout", done)]
        _, last, reason = self._progress(ctx, done)
        if last < 0:
            return _pending(self._evaluate_tasks(ctx, 0, self.initial), done)
        if reason is not None:  # the loop is over: discovery with the final models
            return _pending(self._screen_tasks(ctx, "final", self._members(ctx, done, last), done), done)
        r = last + 1
        members = self._members(ctx, done, last)
        screens = _pending(self._screen_tasks(ctx, r, members, done), done)
        if screens:
            return screens
        if key(r, "label") not in done:
            hits = self._selection(ctx, r, done)
            return [self._label_task(ctx, r, [h[1] for h in hits], tuple(("hit", h[0]) for h in hits))]
        if key(r, "data") not in done:
            return [self._data_task(ctx, r, done)]
        tuned = [self._finetune_task(ctx, r, j, m, done) for j, m in enumerate(members)
                 if key(r, "finetune", f"m{j}") not in done]
        if tuned:
            return tuned
        return _pending(self._evaluate_tasks(ctx, r, self._members(ctx, done, r)), done)

    def _failed(self, ctx: StageContext) -> bool:
        return bool(ctx.ledger.tasks(ctx.campaign_id, stage_id=ctx.stage_id, states=[TaskState.FAILED], limit=1))

    def _heldout_indices(self) -> list[int]:
        pool = self.spec.pool
        return list(range(pool.structures, pool.structures + pool.heldout))

    def _heldout_name(self) -> str:
        return f"{self.spec.dataset}-heldout"

    def _version_name(self) -> str:
        return f"{self.spec.dataset}-active"

    def _source(self, start: int = 0, count: int = 0) -> dict[str, Any]:
        pool = self.spec.pool
        return {"kind": "generator", "seed": pool.seed, "start": start, "count": count,
                "elements": list(pool.elements), "min_atoms": pool.min_atoms, "max_atoms": pool.max_atoms,
                "max_species": pool.max_species, "periodic": pool.periodic}

    def _label_task(self, ctx: StageContext, r: int | str, indices: list[int],
                    inputs: tuple[tuple[str, Any], ...]) -> PlannedTask:
        workdir = ctx.task_dir(*key(r).split("/"))
        cfg = app_config(LabelConfig, {"source": self._source(), "indices": indices, "method": self.spec.method,
                                       "output": str(workdir / "labels.extxyz"), "max_force": self.spec.max_force},
                         f"stages.active ({key(r, 'label')})")
        return PlannedTask(key(r, "label"), TaskSpec(kind="label", app="models.label", config=app_task_config(cfg),
                                                     workdir=str(workdir)), inputs=inputs)

    def _data_task(self, ctx: StageContext, r: int | str, done: Mapping[str, Any]) -> PlannedTask:
        assert self.base is not None
        heldout_file = self._labelled_files(ctx, done, ["heldout"])
        if r == "heldout":
            files, name = [], self._heldout_name()
        else:
            assert isinstance(r, int)
            files, name = self._labelled_files(ctx, done, list(range(1, r + 1))), self._version_name()
        root = ctx.task_dir(*key(r).split("/"), "data")
        prep = {"kind": "files", "files": [f for f, _ in files], "test_files": [f for f, _ in heldout_file],
                "count": 10**9, "seed": self.spec.pool.seed, "split": {"train": 0.8, "val": 0.2},
                "reference_from": {"root": self.base.roots[self.spec.dataset], "dataset": self.spec.dataset}}
        cfg = app_config(FinetuneConfig, {"prepare": prep, "prepare_only": True, "data_root": str(root),
                                          "dataset": name, "head": self.base.head, "output_dir": str(root)},
                         f"stages.active ({key(r, 'data')})")
        inputs = tuple(("artifact", a) for _, a in [*files, *heldout_file])
        return PlannedTask(key(r, "data"), TaskSpec(kind="generate", app="models.finetune",
                                                    config=app_task_config(cfg), workdir=str(root)), inputs=inputs)

    def _labelled_files(self, ctx: StageContext, done: Mapping[str, Any], rounds: list[int | str]
                        ) -> list[tuple[str, int]]:
        """``(extxyz path, artifact id)`` of the label tasks of ``rounds`` that labelled something."""
        out = []
        for r in rounds:
            task = done[key(r, "label")]
            self._record_labels(ctx, task)
            arts = ctx.ledger.artifacts_of_task(task.id, "labels")
            if arts:
                out.append((arts[0].path, int(arts[0].id)))
        return out

    def _screen_tasks(self, ctx: StageContext, r: int | str, members: list[ModelCheckpoint],
                      done: Mapping[str, Any]) -> list[PlannedTask]:
        spec = self.spec
        final = r == "final"
        if final and spec.top_k == 0:
            return []
        exclude = [] if final else self._labelled_indices(ctx, done, r)
        top_k = spec.top_k if final else spec.select.batch * (DIVERSITY_POOL if spec.select.diversity else 1)
        models = [{"id": mc.model_id, "checkpoint": mc.path, "sha256": mc.sha256} for mc in members]
        out = []
        for k, (start, n) in enumerate(shard_ranges(spec.pool.structures, spec.pool.shards)):
            workdir = ctx.task_dir(*key(r).split("/"), "screen", f"{k:03d}")
            criterion = "energy" if final else spec.select.rule
            cfg = app_config(ScreenConfig, {
                "models": models, "source": self._source(start, n), "head": self.base.head if self.base is not None else None,
                "precision": spec.precision, "forces": True, "top_k": top_k, "criterion": criterion,
                "kappa": spec.select.kappa, "force_spread": spec.select.force_spread,
                "criterion_seed": spec.pool.seed * 1000 + (0 if final else int(r)),
                "exclude": exclude, "output": str(workdir / "screen.bp"), "shard": k, "threads": 1},
                f"stages.active ({key(r, 'screen')})")
            out.append(PlannedTask(key(r, "screen", f"{k:03d}"),
                                   TaskSpec(kind="screen", app="models.screen", config=app_task_config(cfg),
                                            workdir=str(workdir)),
                                   inputs=tuple(("model", mc.model_id) for mc in members)))
        return out

    def _labelled_indices(self, ctx: StageContext, done: Mapping[str, Any], r: int | str) -> list[int]:
        """Pool indices sent to labelling in rounds before ``r`` (labelled or failed: never asked again)."""
        out: list[int] = []
        assert isinstance(r, int)
        for q in range(1, r):
            out += list(done[key(q, "label")].spec["config"]["indices"])
        return sorted(out)

    def _selection(self, ctx: StageContext, r: int, done: Mapping[str, Any]) -> list[tuple[int, int]]:
        """Round ``r``'s selection as ``(hit id, pool index)``, recorded as hits on first sight."""
        tasks = [done[p] for p in sorted(k for k in done if k.startswith(key(r, "screen") + "/"))]
        hit_ids = ctx.ledger.hit_ids([t.id for t in tasks])
        if not hit_ids:
            hit_ids = self._record_hits(ctx, r, tasks, self._choose(tasks), purpose="selection")
        hits = ctx.ledger.hits(hit_ids)
        return [(i, int(hits[i]["data"]["index"])) for i in hit_ids]

    def _choose(self, tasks: list[Any]) -> list[tuple[Any, ScreenHit]]:
        pool = [(t, h) for t in tasks for h in read_screen(t.result, _where(t)).top]
        pool.sort(key=lambda p: (p[1].score, p[1].index))
        batch = self.spec.select.batch
        if self.spec.select.diversity:
            pool = pool[: DIVERSITY_POOL * batch]
            return [pool[i] for i in spread_compositions([h.numbers for _, h in pool], batch)]
        return pool[:batch]

    def _record_hits(self, ctx: StageContext, r: int | str, tasks: list[Any], chosen: list[tuple[Any, ScreenHit]],
                     purpose: str) -> list[int]:
        model_ids = [i for i in read_screen(tasks[0].result, _where(tasks[0])).models if i is not None]
        criterion = tasks[0].spec["config"].get("criterion", "energy")
        return ctx.ledger.add_hits(ctx.campaign_id, [
            hit_row(task, h, rank, model_ids, criterion=criterion, extra={"purpose": purpose, "round": r})
            for rank, (task, h) in enumerate(chosen, start=1)])

    def _finetune_task(self, ctx: StageContext, r: int, j: int, parent: ModelCheckpoint,
                       done: Mapping[str, Any]) -> PlannedTask:
        assert self.base is not None
        spec, ft = self.spec, self.spec.finetune
        data_task = done[key(r, "data")]
        dataset_id = self._record_dataset(ctx, data_task, r)
        workdir = ctx.task_dir(*key(r).split("/"), "finetune", f"m{j}")
        cfg = app_config(FinetuneConfig, {
            "checkpoint": parent.path, "data_root": data_task.spec["config"]["data_root"],
            "dataset": self._version_name(), "head": self.base.head, "freeze_encoder": ft.freeze_encoder,
            "epochs": ft.epochs, "batch_size": ft.batch_size, "optimizer": {"lr": ft.lr}, "precision": spec.precision,
            "patience": ft.patience, "output_dir": str(workdir), "seed": spec.pool.seed + j,
            "base_data_root": self.base.roots, "base_datasets": self.base.datasets,
            "base_dataset_heads": self.base.heads, "base_split": "test", "replay": ft.replay},
            f"stages.active ({key(r, 'finetune')})")
        return PlannedTask(key(r, "finetune", f"m{j}"),
                           TaskSpec(kind="finetune", app="models.finetune", config=app_task_config(cfg),
                                    workdir=str(workdir)),
                           inputs=(("model", parent.model_id), ("dataset", dataset_id)))

    def _evaluate_tasks(self, ctx: StageContext, r: int, members: list[ModelCheckpoint]) -> list[PlannedTask]:
        assert self.base is not None
        heldout_root = str(ctx.task_dir(*key("heldout").split("/"), "data"))
        roots = {**self.base.roots, self._heldout_name(): heldout_root}
        heads = {**(self.base.heads or {}), self._heldout_name(): self.base.head}
        out = []
        for j, mc in enumerate(members):
            workdir = ctx.task_dir(*key(r).split("/"), "evaluate", f"m{j}")
            cfg = app_config(EvaluateConfig, {
                "checkpoint": mc.path, "data_root": roots, "datasets": [self._heldout_name(), *self.base.datasets],
                "dataset_heads": heads, "split": "test", "precision": "fp64", "output_dir": str(workdir),
                "max_parity_atoms": 2000, "threads": 1}, f"stages.active ({key(r, 'evaluate')})")
            out.append(PlannedTask(key(r, "evaluate", f"m{j}"),
                                   TaskSpec(kind="evaluate", app="models.evaluate", config=app_task_config(cfg),
                                            workdir=str(workdir)),
                                   inputs=(("model", mc.model_id),)))
        return out

    # ------------------------------------------------------------------------------------------ results
    def on_done(self, ctx: StageContext, task: Any, result: TaskResult) -> list[PlannedTask]:
        """Record what the task made (idempotent), then plan what it unblocked."""
        kind = task.key.split("/")[2]
        if kind == "label":
            self._record_labels(ctx, task)
        elif kind == "data":
            self._record_dataset(ctx, task, "heldout" if "/heldout/" in task.key else self._round_of(task))
        elif kind == "finetune":
            self._record_model(ctx, task)
        elif kind == "evaluate":
            self._record_evaluation(ctx, task)
        return self._advance(ctx)

    def on_failed(self, ctx: StageContext, task: Any, result: TaskResult | None) -> list[PlannedTask]:
        """A task failed for good (after its retries): the loop stops there; ``finish`` says which."""
        return []

    def poll(self, ctx: StageContext, running: list[Any]) -> list[PlannedTask]:
        """Nothing to watch."""
        return []

    def _round_of(self, task: Any) -> int:
        part = task.key.split("/")[1]
        return int(part[1:]) if part.startswith("r") and part[1:].isdigit() else 0

    def _record_labels(self, ctx: StageContext, task: Any) -> None:
        led = ctx.ledger
        res = read_labels(task.result, _where(task))
        hit_of: dict[str, int] = {}
        if task.key.split("/")[1] != "heldout":  # the selected candidates this task labels
            stage_hits = led.hits(led.hit_ids([t.id for t in led.tasks(ctx.campaign_id, stage_id=ctx.stage_id)
                                               if t.key.startswith(key(self._round_of(task), "screen") + "/")]))
            hit_of = {h["structure_id"]: i for i, h in stage_hits.items()}
        led.add_labels(ctx.campaign_id, task.id, [
            {"hit_id": hit_of.get(lab.structure_id), "round": self._round_of(task), "structure_id": lab.structure_id,
             "sid": lab.sid, "formula": lab.formula, "natoms": lab.natoms, "method": res.method,
             "status": lab.status, "cause": lab.cause, "message": lab.message, "energy_ev": lab.energy,
             "max_force_ev_per_a": lab.max_force, "seconds": lab.seconds} for lab in res.labels])
        if res.output is not None:
            art = led.add_artifact(res.output.path, "labels", task_id=task.id, sha256=res.output.sha256)
            led.link("output_of", ("artifact", art.id), ("task", task.id), ctx.campaign_id)

    def _record_dataset(self, ctx: StageContext, task: Any, r: int | str) -> int:
        led = ctx.ledger
        found = led.datasets_of_task(task.id)
        if found:
            return int(found[0].id)
        prep = read_prepare_result(task.result, _where(task)).prepared
        version = 0 if r == "heldout" else int(r)
        row = led.add_dataset(
            name=prep.dataset, head_id=prep.head_id, fidelity=self.spec.method,
            level_of_theory=LEVEL_OF_THEORY[self.spec.method], units={"energy": "eV", "forces": "eV/Å"},
            counts=prep.counts, elements=prep.elements, store_path=task.spec["config"]["data_root"],
            content_hash=prep.content_hash, task_id=task.id, version=version,
            summary={"reference_energies": prep.reference_energies, "extends": self.spec.dataset,
                     "with_forces": prep.with_forces, "round": version})
        led.link("output_of", ("dataset", row.id), ("task", task.id), ctx.campaign_id)
        if isinstance(r, int) and r > 1:
            prev = ctx.ledger.get_task_by_key(ctx.campaign_id, key(r - 1, "data"))
            if prev is not None and (before := led.datasets_of_task(prev.id)):
                led.link("derived_from", ("dataset", row.id), ("dataset", before[0].id), ctx.campaign_id)
        return int(row.id)

    def _record_model(self, ctx: StageContext, task: Any) -> int:
        led = ctx.ledger
        res = read_finetune(task.result, _where(task))
        r, j = self._round_of(task), int(task.key.rsplit("/m", 1)[1])
        parent_id = self._parent_id(ctx, r, j)
        parent = led.model(parent_id)
        assert parent is not None
        art = led.add_artifact(res.checkpoint.path, "checkpoint", task_id=task.id, sha256=res.checkpoint.sha256 or None)
        led.link("output_of", ("artifact", art.id), ("task", task.id), ctx.campaign_id)
        metrics = res.model_dump(mode="json", include={"objective", "best_epoch", "epochs_run", "test_metrics",
                                                       "base_heads", "train_graphs", "replayed_graphs_per_epoch",
                                                       "wall_time_s"})
        metrics.update({"active_round": r, "member": j, "rule": self.spec.select.rule})
        model_id = led.save_model({"task_id": task.id, "role": "finetuned"}, create={
            "campaign_id": ctx.campaign_id, "name": f"{self.spec.dataset}-active-r{r:02d}-m{j}",
            "family": parent.family, "hyperparameters": dict(parent.hyperparameters or {}), "parent_id": parent_id},
            update={"checkpoint_id": art.id, "metrics": metrics})
        led.link("output_of", ("model", model_id), ("task", task.id), ctx.campaign_id)
        led.link("finetuned_from", ("model", model_id), ("model", parent_id), ctx.campaign_id)
        if not led.has_metrics(task.id):
            led.add_metrics(task.id, [{**h.model_dump(), "head": "all" if h.head is None else h.head}
                                      for h in res.history])
        siblings = [led.models(task_id=t.id) for t in led.tasks(ctx.campaign_id, stage_id=ctx.stage_id,
                                                                 states=[TaskState.DONE])
                    if t.key.startswith(key(r, "finetune") + "/")]
        if len(siblings) == len(self.initial) and all(siblings):
            ids = [rows[0].id for rows in sorted(siblings, key=lambda rows: rows[0].name)]
            led.save_ensemble(ctx.campaign_id, f"active-r{r:02d}", ids, {"active_round": r,
                                                                         "rule": self.spec.select.rule})
        return model_id

    def _parent_id(self, ctx: StageContext, r: int, j: int) -> int:
        if r == 1:
            return self.initial[j].model_id
        prev = ctx.ledger.get_task_by_key(ctx.campaign_id, key(r - 1, "finetune", f"m{j}"))
        rows = ctx.ledger.models(task_id=prev.id) if prev is not None else []
        return int(rows[0].id) if rows else self._record_model(ctx, prev)

    def _record_evaluation(self, ctx: StageContext, task: Any) -> None:
        led = ctx.ledger
        if led.has_metrics(task.id):
            return
        res = read_evaluation(task.result, _where(task))
        heldout = self._heldout_name()
        led.add_metrics(task.id, [
            {"epoch": self._round_of(task), "split": "heldout" if name == heldout else "test", "head": name,
             "name": fig, "value": getattr(d, fig)}
            for name, d in res.datasets.items() for fig in FIGURES
            if getattr(d, fig) is not None and math.isfinite(getattr(d, fig))])
        if res.parity is not None:
            art = led.add_artifact(res.parity.path, "parity", task_id=task.id, sha256=res.parity.sha256)
            led.link("output_of", ("artifact", art.id), ("task", task.id), ctx.campaign_id)

    # ------------------------------------------------------------------------------------------ finish
    def finish(self, ctx: StageContext) -> str:
        """Record the discovery hits and the round summary; ``failed`` (with the task) when a task failed."""
        failed = ctx.ledger.tasks(ctx.campaign_id, stage_id=ctx.stage_id, states=[TaskState.FAILED])
        if failed:
            self.note = f"the loop stopped at {', '.join(sorted(t.key for t in failed))} (failed)"
            return "failed"
        done = self._done(ctx)
        for task in done.values():  # results recorded before a crash but not consumed: record them now
            kind = task.key.split("/")[2]
            if kind == "label":
                self._record_labels(ctx, task)
            elif kind == "finetune":
                self._record_model(ctx, task)
            elif kind == "evaluate":
                self._record_evaluation(ctx, task)
        errors, last, reason = self._progress(ctx, done)
        if reason is None:
            self.note = "the loop did not finish its rounds"
            return "failed"
        finals = [done[k] for k in sorted(k for k in done if k.startswith(key("final", "screen") + "/"))]
        hit_ids: list[int] = []
        if finals:
            hit_ids = ctx.ledger.hit_ids([t.id for t in finals])
            if not hit_ids:
                pool = [(t, h) for t in finals for h in read_screen(t.result, _where(t)).top]
                pool.sort(key=lambda p: (p[1].score, p[1].index))
                hit_ids = self._record_hits(ctx, "final", finals, pool[: self.spec.top_k], purpose="discovery")
        labels = ctx.ledger.labels(ctx.campaign_id)
        rounds = [{"round": k, "heldout_force_mae_mev_per_a": e,
                   "labelled": sum(1 for lab in labels if lab.round == k and lab.status == "ok" and k > 0),
                   "failed": sum(1 for lab in labels if lab.round == k and lab.status == "failed" and k > 0)}
                  for k, e in enumerate(errors)]
        ctx.ledger.update_stage_config(ctx.stage_id, rounds=rounds, stopped=reason)
        ctx.shared["active"] = {"rounds": rounds, "stopped": reason, "hits": hit_ids,
                                "models": [m.model_id for m in self._members(ctx, done, last)]}
        self.note = f"stopped after round {last}: {reason}"
        return "done"


def _pending(planned: list[PlannedTask], done: Mapping[str, Any]) -> list[PlannedTask]:
    """The planned tasks not done yet."""
    return [p for p in planned if p.key not in done]


def _where(task: Any) -> str:
    return f"result of task {task.id} ({task.key})"


__all__ = ["ActiveStage", "key", "spread_compositions"]
