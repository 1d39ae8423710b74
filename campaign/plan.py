"""What running a recipe would do, without doing it (``campaign run --dry-run``): per stage the tasks it would
create, what each needs, and an upper bound on the node-hours it could use, plus the batch scripts of the site.

Task counts follow the stages' own planning rules: a demo dataset's generation shards and every dataset's
preprocessing parts (and their merge), ``max_trials`` per HPO study, a scaling study's points (each bounded
here by the largest one), the promoted models' training (at least
one chunk each), screening shards, and per fine-tuning task its data task, its fine-tune and its from-scratch
baseline, and per active-learning round its screens, labels, dataset version, fine-tunes and evaluations. Where a
count depends on results (how many models promotion selects, how many chunks training needs, when a loop
stops) the plan says "up to" or "at least". Node-hours are a bound only where a task's walltime is known: the
study's ``trial_timeout_s``, training's ``chunk_walltime_s``, else a batch job's walltime (no task outlives
its block); a local site has no node-hours.
"""

from __future__ import annotations

from dataclasses import dataclass

from campaign.recipe import Recipe


@dataclass(frozen=True)
class StagePlan:
    """One stage: how many tasks (``count``, with ``qualifier`` "", "up to" or "at least"), nodes and ranks per
    task, a walltime per task when known (seconds) and the node-hours bound it gives."""

    stage: str
    count: int
    qualifier: str
    nodes: int
    ranks: int
    walltime_s: float | None
    note: str = ""

    @property
    def node_hours(self) -> float | None:
        """``count x nodes x walltime``: an upper bound (``None`` without a walltime, or for "at least")."""
        if self.walltime_s is None or self.qualifier == "at least":
            return None
        return self.count * self.nodes * self.walltime_s / 3600.0

    def tasks_text(self) -> str:
        """``12``, ``up to 8``, ``at least 3``."""
        return f"{self.qualifier} {self.count}".strip()


def plan(recipe: Recipe) -> list[StagePlan]:
    """The plan of every stage the recipe has, in run order."""
    batch = recipe.site.name != "local"
    block_s = float(recipe.site.walltime_s) if batch else None
    out: list[StagePlan] = []
    st = recipe.stages
    if st.preprocess is not None:
        gen = sum(d.shards for d in recipe.datasets if d.count is not None)
        prep = sum(d.preprocess_shards + (1 if d.preprocess_shards > 1 else 0) for d in recipe.datasets)
        out.append(StagePlan("preprocess", gen + prep, "", 1, 1, block_s,
                             f"{gen} generation shards, {prep} preprocessing tasks" if gen else
                             f"{prep} preprocessing tasks"))
    for h in st.hpo or []:
        wall = float(h.trial_timeout_s) if h.trial_timeout_s is not None else block_s
        out.append(StagePlan(f"hpo {h.name}", h.max_trials, "", h.nodes_per_trial, h.nodes_per_trial * h.ranks_per_node,
                             wall, f"{h.family}, {h.epochs} epochs per trial, {h.trials_in_flight} at once, "
                                   f"{h.precision}"))
    promoted = 0
    if st.promote is not None:
        families = len({h.family for h in st.hpo or []})
        promoted = st.promote.top_overall + (families if st.promote.best_per_family else 0)
        out.append(StagePlan("promote", 0, "", 0, 0, None, f"up to {promoted} models promoted (no task)"))
    if st.scaling is not None:
        sc = st.scaling
        per_sweep = len(sc.modes) * len(sc.precision)
        nodes = -(-max(sc.ranks) // sc.ranks_per_node)
        out.append(StagePlan("scaling", per_sweep * len(sc.ranks), "", nodes, max(sc.ranks), block_s,
                             f"{sc.steps} steps at {', '.join(map(str, sc.ranks))} ranks, "
                             f"{' and '.join(sc.modes)} scaling, {', '.join(sc.precision)} "
                             f"(nodes and ranks: the largest point)"))
    if st.train is not None:
        models = len(st.train.models) if isinstance(st.train.models, list) else (st.train.top or promoted or 1)
        qualifier = "" if isinstance(st.train.models, list) and st.train.chunk_walltime_s is None else "at least"
        wall = st.train.chunk_walltime_s or block_s
        out.append(StagePlan("train", models, qualifier, st.train.nodes, st.train.nodes * st.train.ranks_per_node,
                             wall, f"{st.train.epochs} epochs per model, {st.train.precision}"
                                   + (", chunked to the walltime" if st.train.chunk_walltime_s else "")))
    if st.evaluate is not None:
        ev = st.evaluate
        n = len(ev.models) if isinstance(ev.models, list) else (
            (st.train.top or promoted or 1) if st.train is not None and ev.models != "promoted" else promoted or 1)
        out.append(StagePlan("evaluate", n, "" if isinstance(ev.models, list) else "up to", 1, 1, block_s,
                             f"each model on each dataset's {ev.split} split, {ev.precision}"))
    if st.screen is not None:
        out.append(StagePlan("screen", st.screen.shards, "", 1, 1, block_s,
                             f"{st.screen.structures:,} structures"))
    if st.finetune is not None:
        n = sum(2 + (1 if t.scratch else 0) for t in st.finetune.tasks)
        out.append(StagePlan("finetune", n, "", 1, 1, block_s,
                             f"{len(st.finetune.tasks)} downstream tasks (data, fine-tune, scratch baseline)"))
    if st.active is not None:
        a = st.active
        if isinstance(a.model, list):
            members, said = len(a.model), str(len(a.model))
        elif st.promote is not None and a.from_campaign is None:  # the ensemble this recipe's promotion records
            members, said = st.promote.ensemble_k, str(st.promote.ensemble_k)
        else:  # an earlier campaign's ensemble: its size is not in the recipe
            members, said = 3, "assuming 3"
        shards = a.pool.shards
        n = 2 + members + a.stop.rounds * (shards + 2 + 2 * members) + (shards if a.top_k else 0)
        out.append(StagePlan("active", n, "up to", 1, 1, block_s,
                             f"{a.stop.rounds} rounds x {a.select.batch} {a.method} labels, "
                             f"{said} members; held-out {a.pool.heldout}"))
    return out
