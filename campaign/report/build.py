"""Build a campaign's report: gather the data (read-only), draw the figures, write ``index.html`` and PNGs.

Every file is written atomically (a temporary file in the same folder, then ``os.replace``); ``index.html``
is written last, so a reader never sees a page that points at a missing or half-written image.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from matplotlib.figure import Figure

from campaign.errors import CampaignInputError
from campaign.report import figures
from campaign.report.data import ReportData, gather
from campaign.report.database import readonly_engine
from campaign.report.page import Section, fmt_config, render, table
from campaign.status import format_duration
from models.atomic_files import write_bytes_atomic

INDEX = "index.html"


@dataclass
class ReportOutcome:
    """Where the report went and what it holds."""

    index: Path
    images: list[Path] = field(default_factory=list)
    empty_sections: list[str] = field(default_factory=list)


def _save(fig: Figure, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    write_bytes_atomic(path, buf.getvalue())


class _Writer:
    """Saves figures into the output folder and remembers them."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.images: list[Path] = []

    def add(self, section: Section, fig: Figure | None, name: str, caption: str) -> bool:
        if fig is None:
            return False
        path = self.out / name
        _save(fig, path)
        self.images.append(path)
        section.figures.append((name, caption))
        return True


def _hpo_sections(data: ReportData, w: _Writer) -> list[Section]:
    s = Section("hpo", "HPO campaigns", "Objective (best-epoch validation loss, lower is better) of every trial "
                "by trial number, and the best so far; pruned trials were stopped early by the campaign's rule.")
    if not w.add(s, figures.hpo_objectives(data.trials), "hpo_objectives.png", "objective per trial"):
        s.empty = "the hpo stage has not recorded a trial with an objective."
    groups: dict[str, list] = defaultdict(list)
    for t in data.trials:
        groups[t.hpo].append(t)
    rows = []
    for hpo, ts in sorted(groups.items()):
        scored = [t for t in ts if t.objective is not None]
        best = min(scored, key=lambda t: float(t.objective)) if scored else None
        cost = sum(t.wall_time_s or 0.0 for t in ts)
        rows.append([hpo, ts[0].family, len(ts), sum(t.status == "done" for t in ts),
                     sum(t.status == "pruned" for t in ts), sum(t.status == "failed" for t in ts),
                     best.objective if best else None, f"#{best.number} {fmt_config(best.config)}" if best else "–",
                     format_duration(cost)])
    if rows:
        s.tables.append(table(["hpo", "family", "trials", "done", "pruned", "failed", "best objective",
                               "best trial", "training time"], rows))
    p = Section("hyperparameters", "Hyperparameters", "Parallel coordinates of the searched hyperparameters "
                "(log axes where a value spans more than a decade), each trial coloured by its objective: the "
                "darker, the better.")
    if not w.add(p, figures.hpo_parallel(data.trials), "hpo_parallel.png", "parallel coordinates"):
        p.empty = "needs at least two scored trials of an HPO campaign whose hyperparameters vary."
    return [s, p]


def _promotion(data: ReportData) -> Section:
    s = Section("promotion", "Promotion", "Models promoted from the HPO trials by the recipe's rule "
                "(top-k overall, best of each family, Pareto front of objective and cost).")
    if not data.promoted:
        s.empty = "the promote stage has not run."
        return s
    s.tables.append(table(["rank", "model", "family", "from trial", "objective", "why", "hyperparameters"],
                          [[p.rank, f"{p.id} {p.name}", p.family, p.trial, p.objective, ", ".join(p.reasons),
                            fmt_config(p.hyperparameters)] for p in data.promoted]))
    return s


def _curves(data: ReportData, w: _Writer) -> Section:
    s = Section("curves", "Loss curves", "Training and validation loss per epoch for each head (dataset) and the "
                "weighted total: the trained models, else the promoted models' trials, else the best trial.")
    for i, c in enumerate(data.curves):
        w.add(s, figures.loss_curves(c), f"curves_{i + 1}.png", c.label)
    if not s.figures:
        s.empty = "no per-epoch metrics recorded yet."
    return s


def _parity(data: ReportData, w: _Writer) -> Section:
    s = Section("parity", "Parity on the test split", "Predicted against reference energies per atom and force "
                "components, per dataset, on each dataset's test split (the evaluate stage), and each model's "
                "errors there.")
    by_label: dict[str, list] = defaultdict(list)
    for p in data.parity:
        by_label[p.label].append(p)
    for i, (label, sets) in enumerate(by_label.items()):
        w.add(s, figures.parity(sets), f"parity_{i + 1}.png", label)
    if data.test_metrics:
        s.tables.append(table(["model", "dataset (head)", "structures", "energy MAE (meV/atom)",
                               "energy RMSE (meV/atom)", "force MAE (meV/Å)", "force RMSE (meV/Å)"],
                              [[t.model, f"{t.dataset} ({t.head})", t.graphs, t.energy_mae_mev_per_atom,
                                t.energy_rmse_mev_per_atom, t.force_mae_mev_per_a, t.force_rmse_mev_per_a]
                               for t in data.test_metrics]))
    if not s.figures:
        s.empty = "no model has test-split predictions yet (add an evaluate stage to the recipe)."
    s.notes.extend(f"unreadable parity file: {m}" for m in data.parity_missing)
    return s


def _screening(data: ReportData, w: _Writer) -> Section:
    scr = data.screening
    s = Section("screening", "Screening", "Energy per atom of the screened candidates and the top hits "
                "(lowest score first).")
    if not w.add(s, figures.screening(scr), "screening.png", "energy distribution and hits"):
        s.empty = "the screen stage has not recorded hits."
    if scr.hits:
        s.tables.append(table(["rank", "structure", "formula", "atoms", "score", "energy/atom (eV)",
                               "uncertainty (eV/atom)", "model", "model's test MAE (meV/atom)"],
                              [[h.rank, h.structure_id, h.formula, h.natoms, h.score, h.energy_per_atom,
                                h.uncertainty, h.model,
                                "not evaluated" if h.model_error_mev_per_atom is None else h.model_error_mev_per_atom]
                               for h in scr.hits[:25]]))
        if all(h.model_error_mev_per_atom is None for h in scr.hits):
            s.notes.append("the screening model was not evaluated: add an evaluate stage before screen to see "
                           "its test error next to each hit")
        if len(scr.hits) > 25:
            s.notes.append(f"{len(scr.hits)} hits in all: campaign sql --query screening_hits")
    return s


def _finetune(data: ReportData, w: _Writer) -> Section:
    s = Section("finetune", "Fine-tuning", "Each downstream task fine-tuned from the pre-trained model and "
                "trained from scratch with the same architecture; test-split figure of merit, lower is better.")
    if not w.add(s, figures.finetune(data.finetune), "finetune.png", "pre-trained vs from scratch"):
        s.empty = "the finetune stage has not recorded fine-tuned or from-scratch models."
    if data.finetune:
        s.tables.append(table(["downstream task", "metric", "fine-tuned", "from scratch", "scratch / fine-tuned"],
                              [[p.task, p.metric, p.finetuned, p.scratch,
                                p.scratch / p.finetuned if p.finetuned and p.scratch is not None else None]
                               for p in data.finetune]))
    return s


def _scaling(data: ReportData, w: _Writer) -> Section:
    s = Section("scaling", "Scaling", "The training app timed on one model at each point of a strong-scaling "
                "sweep (a fixed global batch split over the ranks) and a weak-scaling one (a fixed batch per rank): "
                "throughput over all ranks, and efficiency against the sweep's smallest point.")
    if not w.add(s, figures.scaling(data.scaling), "scaling.png", "throughput and efficiency"):
        s.empty = "no scaling study has run."
        return s
    s.tables.append(table(["mode", "precision", "ranks", "throughput (graphs/s)", "efficiency",
                           "step time (s)", "peak memory per rank (MiB)", "energy per step (J)"],
                          [[r.mode, r.precision, r.ranks, r.graphs_per_s, r.efficiency, r.step_time_s,
                            None if r.peak_memory_bytes is None else r.peak_memory_bytes / 2**20,
                            r.energy_j_per_step] for r in data.scaling]))
    s.notes.append("efficiency = throughput(n) / ((n / n0) x throughput(n0)), n0 the smallest rank count of the "
                   "sweep; throughput counts training steps only (start-up and validation excluded); energy: GPUs, "
                   "CPU packages and DRAM where the hardware exposes them, else empty")
    return s


def _active(data: ReportData, w: _Writer) -> Section:
    s = Section("active", "Active learning", "Each round screens the pool with the current ensemble, labels the "
                "structures the acquisition rule picks, fine-tunes every member on the new dataset version and "
                "evaluates it on a held-out labelled set and on the base datasets' test splits.")
    if not w.add(s, figures.active_rounds(data.active_rounds), "active.png", "error per round"):
        s.empty = "no active-learning round has been evaluated."
    if data.active_rounds:
        s.tables.append(table(["round", "models", "held-out force MAE (meV/Å)", "best member (meV/Å)",
                               "held-out energy MAE (meV/atom)", "base test force MAE (meV/Å)", "labelled",
                               "failed", "dataset version"],
                              [[r.round, r.models, r.heldout_force_mae_mev_per_a, r.best_heldout_force_mae_mev_per_a,
                                r.heldout_energy_mae_mev_per_atom, r.base_test_force_mae_mev_per_a, r.labelled,
                                r.failed_labels, r.dataset_version or "–"] for r in data.active_rounds]))
        s.notes.append("round 0: the starting models, and the held-out set's labels; "
                       "campaign sql --query active_rounds")
    if data.selections:
        s.tables.append(table(["round", "rank", "structure", "formula", "atoms", "rule", "score",
                               "force disagreement (eV/Å)", "label", "energy (eV)"],
                              [[x.round, x.rank, x.structure_id, x.formula, x.natoms, x.criterion, x.score,
                                x.force_uncertainty, x.label, x.energy_ev] for x in data.selections[:60]]))
        if len(data.selections) > 60:
            s.notes.append(f"{len(data.selections)} selections in all: campaign sql \"SELECT * FROM labels\"")
    return s


def _resources(data: ReportData, w: _Writer) -> Section:
    s = Section("resources", "Resources", "CPU-, GPU- and node-hours of every attempt (failed ones included) per "
                "stage and site, and a timeline of the attempts coloured by how they ended.")
    w.add(s, figures.resources(data.resources), "resources.png", "hours per stage and site")
    if w.add(s, figures.timeline(data.timeline, data.as_of), "timeline.png", "attempts over time"):
        if data.timeline_total > len(data.timeline):
            s.notes.append(f"the timeline shows the latest {len(data.timeline)} of {data.timeline_total} attempts")
    if data.resources:
        s.tables.append(table(["stage", "site", "attempts", "failed", "node-hours", "CPU-hours", "GPU-hours",
                               "CPU use"],
                              [[r.stage, r.site, r.attempts, r.failed, r.node_hours, r.cpu_hours, r.gpu_hours,
                                "–" if r.cpu_utilisation is None else f"{100 * r.cpu_utilisation:.0f}%"]
                               for r in data.resources]))
    else:
        s.empty = "no attempt has started yet."
    return s


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CampaignInputError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and (out / INDEX).exists() and not os.access(out / INDEX, os.W_OK):
        raise CampaignInputError(f"--out {out}: {INDEX} is not writable")


def build_report(campaign: str, out: str | Path, *, db: str | None = None,
                 now: datetime | None = None) -> ReportOutcome:
    """Write the report of ``campaign`` into the folder ``out`` (created if needed).

    Args:
        campaign: Campaign name.
        out: Output folder: ``index.html`` and its PNG figures.
        db: Database URL (default: ``$CAMPAIGN_DB`` or ``sqlite:///campaign.db``).
        now: The report's "as of" time (default: now, UTC).

    Raises:
        campaign.status.UnknownCampaign: no such campaign (nothing is written).
        CampaignInputError: ``out`` is unusable (nothing is written).
        db.engine.DatabaseError: the database cannot be read.
    """
    out = Path(out)
    _check_out(out)
    engine = readonly_engine(db)
    try:
        data = gather(engine, campaign, now=now)
    finally:
        engine.dispose()
    out.mkdir(parents=True, exist_ok=True)
    w = _Writer(out)
    sections = [*_hpo_sections(data, w), _promotion(data), _scaling(data, w), _curves(data, w), _parity(data, w),
                _screening(data, w), _finetune(data, w), _active(data, w), _resources(data, w)]
    index = out / INDEX
    write_bytes_atomic(index, render(data, sections).encode())
    return ReportOutcome(index, w.images, [s.title for s in sections if s.empty is not None])
