"""Active learning against random selection: the same label budget, the same seeds, the same loop.

* pre-training (once): a campaign of its own — the demo-EMT dataset (``--pretrain-count`` structures), a PaiNN
  HPO (``--trials`` trials of ``--pretrain-epochs`` epochs), promotion of the ``--members`` best trials as the
  ensemble;
* then, for each repetition ``k`` (pool seed ``k``) and each rule (``uncertainty``: the ensemble's largest
  atomic force disagreement, the batch spread over compositions among the 4 x batch most uncertain, as
  ``recipes/active.yaml`` does, ours; ``random``: the peer), ``campaign run`` of the active stage from that
  ensemble:
  a pool of ``--pool`` generator candidates (2-``--max-atoms`` atoms, periodic cells of Cu Ag Au Ni Pd Pt Al),
  a held-out set of ``--heldout`` candidates labelled by EMT, ``--rounds`` rounds of ``--batch`` EMT labels
  each, every member fine-tuned (``--epochs``, replay 0.5) from its previous round;
* the figure: the members' mean held-out force MAE after the last round (meV/Å), read with the named query
  ``active_rounds``, averaged over the repetitions.

``ratio`` = random's held-out force MAE after R rounds / ours (> 1: the uncertainty rule learns more from the
same labels). Goal >= 1.2 with R = 3, and the held-out error falling round over round. The per-round figures of
both rules are printed before the JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CAMPAIGN = str(Path(sys.executable).with_name("campaign"))

PRETRAIN = """\
campaign: bench-active-pre
seed: 0
workdir: runs
site: {{name: local, workers: {workers}}}
datasets:
  - {{name: demo-emt, count: {count}, shards: 2}}
hpo_defaults:
  precision: fp32
  max_trials: {trials}
  trials_in_flight: {workers}
  epochs: {epochs}
  batch_size: 16
  fixed: {{cutoff: 5.0}}
stages:
  preprocess: {{cutoff: 5.0, max_neighbours: 24, split: [0.8, 0.1, 0.1]}}
  hpo:
    - name: painn
      family: painn
      search_space:
        hidden: {{type: categorical, choices: [32, 48]}}
        layers: {{type: int, low: 2, high: 3}}
        lr: {{type: float, low: 2.0e-3, high: 1.0e-2, log: true}}
  promote: {{top_overall: {members}, best_per_family: false, ensemble_k: {members}}}
"""

ACTIVE = """\
campaign: bench-active-{name}-{rep}
seed: {rep}
workdir: runs
site: {{name: local, workers: {workers}}}
stages:
  active:
    from_campaign: bench-active-pre
    dataset: demo-emt
    method: emt
    pool: {{structures: {pool}, heldout: {heldout}, shards: 2, min_atoms: 2, max_atoms: {max_atoms}, seed: {rep}}}
    select: {{rule: {rule}, batch: {batch}{options}}}
    finetune: {{epochs: {epochs}, batch_size: 8, lr: 1.0e-3, replay: 0.5, patience: 10}}
    stop: {{rounds: {rounds}}}
    precision: fp32
    top_k: 0
"""


def _run(recipe: Path, url: str, cwd: Path) -> float:
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAMPAIGN_DB": ""}
    proc = subprocess.run([CAMPAIGN, "run", str(recipe), "--db", url, "--quiet"], cwd=cwd, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{recipe.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def _rounds(url: str, campaign: str) -> list[dict[str, Any]]:
    from campaign import api

    return api.named_query("active_rounds", {"campaign": campaign}, db=url).as_dicts()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--pool", type=int, default=400)
    ap.add_argument("--heldout", type=int, default=64)
    ap.add_argument("--max-atoms", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--pretrain-count", type=int, default=240)
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--force-spread", choices=["max", "mean", "sum"], default="max",
                    help="ours: a structure's force disagreement (worst atom, mean, or sum over atoms)")
    ap.add_argument("--diversity", action=argparse.BooleanOptionalAction, default=True,
                    help="ours: spread each batch over compositions (the shipped recipe's choice)")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args()

    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-active-"))
    work.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{work / 'bench.db'}"
    pre = work / "pretrain.yaml"
    pre.write_text(PRETRAIN.format(workers=args.workers, count=args.pretrain_count, trials=args.trials,
                                   epochs=args.pretrain_epochs, members=args.members))
    t_pre = _run(pre, url, work)
    print(f"pre-training: {t_pre:.0f} s", file=sys.stderr)

    final: dict[str, list[float]] = {"uncertainty": [], "random": []}
    curves: dict[str, list[list[float]]] = {"uncertainty": [], "random": []}
    wall: dict[str, float] = {"uncertainty": 0.0, "random": 0.0}
    labels: dict[str, int] = {"uncertainty": 0, "random": 0}
    for rep in range(args.reps):
        for rule in ("uncertainty", "random"):
            name = rule if rule == "random" else f"{rule}-{args.force_spread}" + ("-div" if args.diversity else "")
            recipe = work / f"active-{name}-{rep}.yaml"
            recipe.write_text(ACTIVE.format(rule=rule, name=name, rep=rep, workers=args.workers, pool=args.pool,
                                            heldout=args.heldout, max_atoms=args.max_atoms, batch=args.batch,
                                            epochs=args.epochs, rounds=args.rounds,
                                            options="" if rule == "random" else
                                            f", force_spread: {args.force_spread}, diversity: {str(args.diversity).lower()}"))
            wall[rule] += _run(recipe, url, work)  # an existing campaign of that name resumes: done, nothing re-run
            rounds = _rounds(url, f"bench-active-{name}-{rep}")
            errors = [float(r["heldout_force_mae_mev_per_a"]) for r in rounds]
            curves[rule].append(errors)
            final[rule].append(errors[-1])
            labels[rule] += sum(int(r["labelled"]) for r in rounds if r["round"] > 0)
            print(f"rep {rep} {rule:11s} held-out force MAE per round (meV/Å): "
                  + " ".join(f"{e:.1f}" for e in errors), file=sys.stderr)

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    ours, peer = mean(final["uncertainty"]), mean(final["random"])
    per_round = {rule: [mean([c[r] for c in curves[rule]]) for r in range(args.rounds + 1)] for rule in curves}
    falls = all(b < a for a, b in zip(per_round["uncertainty"], per_round["uncertainty"][1:], strict=False))
    print(json.dumps({
        "benchmark": "active_learning_heldout_force_mae", "ours": round(ours, 2), "peer": round(peer, 2),
        "unit": "meV/Å (held-out force MAE after the last round; lower is better)", "ratio": round(peer / ours, 3),
        "rule": f"uncertainty (ensemble force disagreement, {args.force_spread} over atoms"
                + (", compositions spread)" if args.diversity else ")"), "peer_rule": "random",
        "rounds": args.rounds, "batch": args.batch, "label_budget": args.rounds * args.batch,
        "labels_computed": labels, "reps": args.reps, "per_round_mean": {k: [round(v, 2) for v in vs]
                                                                         for k, vs in per_round.items()},
        "ours_falls_every_round": falls, "wall_s": {k: round(v, 1) for k, v in wall.items()},
        "pretrain_s": round(t_pre, 1), "goal": ">= 1.2 with R = 3",
    }))


if __name__ == "__main__":
    main()
