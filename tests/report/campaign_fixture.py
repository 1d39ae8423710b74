"""A realistic campaign database for status and report tests, written row by row with the ORM.

What the stages leave (see the contracts between stages): preprocessed datasets with head ids, six HPO
campaigns of trials (done, pruned, failed, one in flight) with per-epoch metrics, promoted models and their
ensemble, trained models with a test-split parity file, screening hits with the full energy histogram,
fine-tuned and from-scratch models per downstream task, and attempts with hosts, timestamps and resources
(failures of every cause, two attempts still in flight). ``stages`` limits how far the campaign got.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from db import models as m

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
#: The clock the fixture's in-flight attempts are measured against.
NOW = T0 + timedelta(hours=12)
FAMILIES = {"painn": "painn", "schnet": "schnet", "egnn": "egnn", "dimenetpp": "dimenet++", "mace": "mace",
            "pna": "pna"}
DATASETS = ("demo-emt", "demo-gfn2", "demo-gfn1")
ALL_STAGES = ("preprocess", "hpo", "promote", "scaling", "train", "screen", "finetune", "active")


class _Builder:
    def __init__(self, s: Session, campaign: m.Campaign) -> None:
        self.s = s
        self.c = campaign
        self.stages: dict[str, m.Stage] = {}
        self.clock = T0

    def stage(self, name: str, status: str = "done") -> m.Stage:
        st = m.Stage(campaign_id=self.c.id, name=name, kind=name, status=status, config={},
                     started_at=self.clock, ended_at=None if status == "running" else self.clock + timedelta(hours=1))
        self.s.add(st)
        self.s.flush()
        self.stages[name] = st
        return st

    def task(self, stage: str, key: str, kind: str, *, state: m.TaskState = m.TaskState.DONE,
             result: dict[str, Any] | None = None, spec: dict[str, Any] | None = None,
             attempts: tuple[str | None, ...] = ("ok",), minutes: float = 5.0, gpus: int = 0, cpus: int = 2,
             nodes: int = 1, site: str = "local", host: str = "node01") -> m.Task:
        t = m.Task(id=uuid.uuid4().hex, campaign_id=self.c.id, stage_id=self.stages[stage].id, key=key, kind=kind,
                   app=f"models.{kind}", spec=spec or {"kind": kind}, state=state, result=result)
        self.s.add(t)
        self.s.flush()
        for i, cause in enumerate(attempts, start=1):
            start = self.clock
            self.clock += timedelta(minutes=minutes / 2)  # tasks overlap: two workers
            a = m.Attempt(task_id=t.id, number=i, site=site, executor="htex", host=host if cause else None,
                          nodes=nodes, ranks=nodes, gpus=gpus, cpus=cpus, submitted_at=start,
                          started_at=start if cause else None,
                          ended_at=start + timedelta(minutes=minutes) if cause else None,
                          exit_cause=m.ExitCause(cause) if cause else None,
                          returncode=None if cause in (None, "ok") else 1,
                          error=None if cause in (None, "ok") else
                          f"Traceback (most recent call last):\n  ...\nRuntimeError: {cause} in {key}")
            self.s.add(a)
        return t

    def metrics(self, task: m.Task, epochs: int, scale: float, heads: int = 3) -> None:
        rows = []
        for e in range(epochs):
            for split, off in (("train", 0.0), ("val", 0.1)):
                total = 0.0
                for h in range(heads):
                    loss = scale * (1 + h * 0.3) * math.exp(-0.4 * e) + off * scale
                    total += loss
                    rows += [m.Metric(task_id=task.id, epoch=e, head=str(h), split=split, name="loss", value=loss),
                             m.Metric(task_id=task.id, epoch=e, head=str(h), split=split,
                                      name="energy_mae_per_atom", value=loss / 3),
                             m.Metric(task_id=task.id, epoch=e, head=str(h), split=split, name="force_mae",
                                      value=loss / 2)]
                rows.append(m.Metric(task_id=task.id, epoch=e, head="None", split=split, name="loss", value=total))
        self.s.add_all(rows)


def build_campaign(engine: Engine, tmp: Path, *, name: str = "demo-hpo",
                   stages: tuple[str, ...] = ALL_STAGES) -> dict[str, Any]:
    """Insert one campaign that got through ``stages``; returns ids and counts the tests check against."""
    rng = np.random.default_rng(0)
    facts: dict[str, Any] = {"name": name}
    with Session(engine) as s, s.begin():
        c = m.Campaign(name=name, recipe_text="campaign: demo-hpo\n", recipe_hash="ab" * 32, code_version="0.1.0",
                       git_sha="1" * 40, user="alice", host="login1", site="local",
                       status="running" if stages != ALL_STAGES else "done", created_at=T0, started_at=T0)
        s.add(c)
        s.flush()
        facts["campaign_id"] = c.id
        b = _Builder(s, c)

        b.stage("preprocess")
        for head, ds in enumerate(DATASETS):
            t = b.task("preprocess", f"preprocess/{ds}", "preprocess", minutes=2)
            s.add(m.Dataset(name=ds, head_id=head, units={"energy": "eV"}, counts={"train": 80}, elements=["Cu"],
                            store_path=str(tmp / ds), content_hash=f"{name}-{ds}", task_id=t.id))
        if "hpo" not in stages:
            return facts

        b.stage("hpo", "done" if "promote" in stages else "running")
        trials: dict[str, list[m.Trial]] = {}
        best_obj: dict[str, float] = {}
        in_flight = 0
        for hpo, family in FAMILIES.items():
            trials[hpo] = []
            for n in range(6):
                cfg = {"hidden": int(rng.choice([16, 32])), "layers": int(rng.integers(1, 4)),
                       "lr": float(10 ** rng.uniform(-4, -2)), "cutoff": 5.0}
                status = "done"
                if n == 2 and hpo == "painn":
                    status = "failed"
                elif n == 4:
                    status = "pruned"
                elif n == 5 and hpo in ("mace", "pna") and "promote" not in stages:
                    status = "running"
                obj = None if status in ("failed", "running") else float(0.05 + rng.random() * 0.5 / (n + 1))
                causes: tuple[str | None, ...] = ("ok",)
                state = m.TaskState.DONE
                if status == "failed":
                    causes, state = ("error", "error", "error"), m.TaskState.FAILED
                elif status == "running":
                    causes, state = ("walltime", None), m.TaskState.RUNNING
                    in_flight += 1
                elif n == 1:
                    causes = ("node_lost", "ok")
                t = b.task("hpo", f"hpo/{hpo}/{n}", "trial", state=state, attempts=causes, minutes=12,
                           result=None if obj is None else {"objective": obj},
                           host=f"node0{n % 2 + 1}")
                if obj is not None:
                    b.metrics(t, epochs=4, scale=obj)
                tr = m.Trial(campaign_id=c.id, hpo=hpo, family=family, number=n, config=cfg, objective=obj,
                             best_epoch=None if obj is None else 3, status=status, task_id=t.id,
                             wall_time_s=None if obj is None else 700.0 + 10 * n,
                             failure="RuntimeError: error" if status == "failed" else None,
                             metrics=None if obj is None else {"n_params": 12345})
                s.add(tr)
                trials[hpo].append(tr)
            s.flush()
            best_obj[hpo] = min(t.objective for t in trials[hpo] if t.objective is not None)
        facts["best_objective"] = best_obj
        facts["in_flight"] = in_flight
        facts["failed_attempts"] = {"error": 3, "node_lost": len(FAMILIES),
                                    "walltime": in_flight}
        if "promote" not in stages:
            return facts

        b.stage("promote")
        ranked = sorted((t for ts in trials.values() for t in ts if t.objective is not None),
                        key=lambda t: t.objective)
        # the main recipe's rule: the two best overall, and the best of every family
        best_of = {}
        for tr in ranked:
            best_of.setdefault(tr.family, tr)
        chosen = sorted({tr.id: tr for tr in [*ranked[:2], *best_of.values()]}.values(), key=lambda t: t.objective)
        promoted = []
        for rank, tr in enumerate(chosen, start=1):
            art = m.Artifact(path=str(tmp / f"ckpt-{tr.id}.pt"), kind="checkpoint", sha256=f"{tr.id:064d}",
                             bytes=1000, task_id=tr.task_id)
            s.add(art)
            s.flush()
            mod = m.Model(campaign_id=c.id, name=f"{tr.hpo}-{tr.number}", role="promoted", family=tr.family,
                          hyperparameters=tr.config, checkpoint_id=art.id, trial_id=tr.id, task_id=tr.task_id,
                          metrics={"objective": tr.objective, "rank": rank,
                                   "reasons": (["top_overall"] if tr in ranked[:2] else [])
                                   + (["best_of_family"] if best_of[tr.family] is tr else [])})
            s.add(mod)
            promoted.append(mod)
        s.flush()
        s.add(m.Ensemble(campaign_id=c.id, name=f"{name}-top3", model_ids=[p.id for p in promoted[:3]],
                         rule={"top_overall": 2, "best_per_family": True, "ensemble_k": 3}))
        facts["promoted"] = [p.id for p in promoted]
        if "scaling" in stages:
            # a strong- and weak-scaling sweep on 1-8 ranks, as the scaling stage records it (no attempts: the
            # resources stay as the other sections' tests count them)
            b.stage("scaling")
            for mode, falloff in (("strong", 0.15), ("weak", 0.05)):
                base = 400.0
                for n in (1, 2, 4, 8):
                    eff = 1.0 / (1.0 + falloff * math.log2(n))
                    thr = base * n * eff
                    t = b.task("scaling", f"scaling/{mode}/fp32/ranks-{n}", "train", attempts=())
                    per_rank = 8 // n if mode == "strong" else 8
                    s.add_all(m.Metric(task_id=t.id, epoch=0, head="None", split="train", name=name, value=v)
                              for name, v in (("graphs_per_s", thr), ("graphs_per_s_per_rank", thr / n),
                                              ("efficiency", eff), ("step_time_s", per_rank * n / thr),
                                              ("peak_memory_bytes", 3e8 + 1e7 * per_rank)))
        if "train" not in stages:
            return facts

        b.stage("train")
        trained = []
        for p in promoted[:2]:
            t = b.task("train", f"train/{p.id}", "train", minutes=90, gpus=8, cpus=56, nodes=2, site="frontier",
                       host="frontier00123", attempts=("walltime", "ok"))
            b.metrics(t, epochs=12, scale=(p.metrics or {})["objective"] * 0.8)
            mod = m.Model(campaign_id=c.id, name=f"{p.name}-trained", role="trained", family=p.family,
                          hyperparameters=p.hyperparameters, parent_id=p.id, task_id=t.id,
                          metrics={"objective": (p.metrics or {})["objective"] * 0.5})
            s.add(mod)
            s.flush()
            trained.append(mod)
            parity = tmp / f"parity-{mod.id}.npz"
            arrays = {}
            for ds in DATASETS:
                e = rng.normal(-3.5, 0.4, 40)
                f = rng.normal(0, 1.0, (400, 3))
                arrays[f"{ds}/energy_true"] = e
                arrays[f"{ds}/energy_pred"] = e + rng.normal(0, 0.02, e.shape)
                arrays[f"{ds}/force_true"] = f
                arrays[f"{ds}/force_pred"] = f + rng.normal(0, 0.05, f.shape)
            np.savez(parity, **arrays)
            s.add(m.Artifact(path=str(parity), kind="parity", sha256=f"{mod.id:064x}", bytes=parity.stat().st_size,
                             task_id=t.id))
        facts["trained"] = [t.id for t in trained]
        if "screen" not in stages:
            return facts

        b.stage("screen")
        edges = np.linspace(-5, -1, 41)
        hits = 0
        best: list[tuple[float, int, str]] = []  # (energy per atom, its rank in its shard, the shard's task)
        for shard in range(2):
            energies = rng.normal(-3.0, 0.5, 5000)
            counts = np.histogram(energies, bins=edges)[0]
            t = b.task("screen", f"screen/{shard}", "screen", minutes=20,
                       result={"screened": 5000, "energy_histogram": {"edges": edges.tolist(),
                                                                      "counts": counts.tolist()}})
            best += [(float(e), k, t.id) for k, e in enumerate(np.sort(energies)[:10], start=1)]
        # the screen stage merges the shards' top lists and ranks them over the whole campaign
        for rank, (e, k, task_id) in enumerate(sorted(best)[:10], start=1):
            # as the screen stage records a hit: the structure, and every head's energy (eV)
            a = 3.75 * (1 + 0.01 * rank)
            data = {"numbers": [29, 29, 29, 79], "positions": [[0, 0, 0], [0, a / 2, a / 2], [a / 2, 0, a / 2],
                                                                [a / 2, a / 2, 0]],
                    "cell": [[a, 0, 0], [0, a, 0], [0, 0, a]], "pbc": [True, True, True], "head_id": 100,
                    "energies": {"100": 4 * e, "101": 4 * e + 0.3}}
            s.add(m.ScreeningHit(task_id=task_id, model_id=trained[0].id, rank=rank, structure_id=f"s-{task_id[:4]}-{k}",
                                 formula="AuCu3", natoms=4, score=e, energy_per_atom=e,
                                 uncertainty=float(abs(rng.normal(0, 0.05))), head="demo-emt", data=data))
            hits += 1
        facts["hits"] = hits
        facts["screened"] = 10000
        if "finetune" not in stages:
            return facts

        b.stage("finetune", "running")
        for task, (ft_mae, sc_mae) in {"water": (0.012, 0.045), "qm9-gap": (0.08, 0.11)}.items():
            for role, mae in (("finetuned", ft_mae), ("scratch", sc_mae)):
                t = b.task("finetune", f"finetune/{task}/{role}", "finetune", minutes=15)
                s.add(m.Model(campaign_id=c.id, name=f"{task}-{role}", role=role, family=trained[0].family,
                              hyperparameters=trained[0].hyperparameters,
                              parent_id=trained[0].id if role == "finetuned" else None, task_id=t.id,
                              metrics={"task": task, "test_loss": mae * 4,
                                       "test_metrics": {"3": {"loss": mae * 4, "energy_mae_per_atom": mae,
                                                              "force_mae": 0.0}}}))
        # one more fine-tune in flight on a GPU site
        b.task("finetune", "finetune/extra/finetuned", "finetune", state=m.TaskState.SUBMITTED, attempts=(None,),
               site="frontier", gpus=8)
        facts["in_flight"] = facts["in_flight"] + 1
        facts["finetune"] = {"water": (0.012, 0.045), "qm9-gap": (0.08, 0.11)}
        if "active" not in stages:
            return facts

        # two rounds of active learning, as the active stage records them (no attempts: the resources stay as
        # the other stages left them): evaluations per round and member, a selection labelled per round
        b.stage("active")
        heldout = {0: (900.0, 950.0), 1: (600.0, 640.0), 2: (420.0, 470.0)}  # round: members' force MAE, meV/Å
        for r, maes in heldout.items():
            for j, mae in enumerate(maes):
                t = b.task("active", f"active/r{r:02d}/evaluate/m{j}", "evaluate", attempts=())
                s.add_all([m.Metric(task_id=t.id, epoch=r, head="demo-emt-heldout", split="heldout",
                                    name="force_mae_mev_per_a", value=mae),
                           m.Metric(task_id=t.id, epoch=r, head="demo-emt", split="test",
                                    name="force_mae_mev_per_a", value=300.0 - 5 * r)])
            if r == 0:
                continue
            scr = b.task("active", f"active/r{r:02d}/screen/000", "screen", attempts=())
            lab = b.task("active", f"active/r{r:02d}/label", "label", attempts=())
            for rank in (1, 2):
                hit = m.ScreeningHit(task_id=scr.id, rank=rank, structure_id=f"gen-0-{10 * r + rank}",
                                     formula="AlCu", natoms=2, score=-2.0 / rank, energy_per_atom=-3.5,
                                     uncertainty=0.1, head="100",
                                     data={"purpose": "selection", "round": r, "criterion": "uncertainty",
                                           "force_uncertainty": 2.0 / rank})
                s.add(hit)
                s.flush()
                s.add(m.Label(campaign_id=c.id, task_id=lab.id, hit_id=hit.id, round=r,
                              structure_id=hit.structure_id, sid=rank, formula="AlCu", natoms=2, method="emt",
                              status="ok" if rank == 1 else "failed", cause=None if rank == 1 else "unphysical",
                              energy_ev=-7.0 if rank == 1 else None, seconds=0.01))
        facts["active"] = {r: sum(v) / 2 for r, v in heldout.items()}
    return facts
