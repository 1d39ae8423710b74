"""The report's figures (matplotlib, Agg canvas, no pyplot state). Each function returns a figure, or None when
its section has no data yet (the page then shows a note instead).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import matplotlib
import matplotlib.dates as mdates
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from campaign.report.data import (
    ActiveRound,
    AttemptSpan,
    Curve,
    FinetunePair,
    ParitySet,
    ResourceRow,
    ScalingRow,
    Screening,
    TrialPoint,
)

#: What the training loss (and the HPO objective) is, with units: the mean squared error of the energy per atom
#: plus the force weight times that of the force components (models.nn.loss.multitask_loss, energy_loss mse).
LOSS_LABEL = "loss: MSE(E/atom) [eV²] + w·MSE(F) [eV²/Å²]"

def metric_unit(name: str) -> str:
    """The unit of a recorded error metric, from its name (``energy_mae_per_atom`` -> eV/atom)."""
    if "force" in name:
        return "eV/Å"
    if "per_atom" in name:
        return "eV/atom"
    if any(k in name for k in ("energy", "gap", "homo", "lumo")):
        return "eV"
    return ""


STATUS_COLORS = {"done": "tab:blue", "pruned": "tab:orange", "failed": "tab:red", "running": "tab:gray",
                 "asked": "tab:gray"}
CAUSE_COLORS = {"ok": "tab:green", "error": "tab:red", "walltime": "tab:orange", "node_lost": "tab:purple",
                "killed": "black", None: "tab:cyan"}


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (safe outside the main thread, no global pyplot state)."""
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _grid(n: int, cols: int = 3) -> tuple[int, int]:
    c = min(cols, n)
    return math.ceil(n / c), c


def _by_hpo(trials: Sequence[TrialPoint]) -> dict[str, list[TrialPoint]]:
    out: dict[str, list[TrialPoint]] = defaultdict(list)
    for t in trials:
        out[t.hpo].append(t)
    return dict(sorted(out.items()))


def _wide(values: np.ndarray) -> bool:
    """Positive values spanning more than a decade: drawn on a log axis."""
    v = values[np.isfinite(values)]
    return v.size > 1 and bool(np.all(v > 0)) and float(v.max() / v.min()) > 10


def hpo_objectives(trials: Sequence[TrialPoint]) -> Figure | None:
    """Objective per trial (by trial number) and the best so far, one panel per HPO campaign."""
    groups = {k: v for k, v in _by_hpo(trials).items() if any(t.objective is not None for t in v)}
    if not groups:
        return None
    rows, cols = _grid(len(groups))
    fig = new_figure(4.2 * cols, 3.0 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (hpo, ts) in zip(axes, groups.items(), strict=False):
        ts = sorted(ts, key=lambda t: t.number)
        for status in ("done", "pruned"):
            pts = [(t.number, t.objective) for t in ts if t.status == status and t.objective is not None]
            if pts:
                x, y = zip(*pts, strict=True)
                ax.scatter(x, y, s=18, color=STATUS_COLORS[status], label=status, zorder=3)
        scored = [(t.number, t.objective) for t in ts if t.objective is not None]
        numbers = np.array([p[0] for p in scored])
        best = np.minimum.accumulate(np.array([p[1] for p in scored], dtype=float))
        ax.step(numbers, best, where="post", color="black", lw=1.2, label="best so far")
        failed = [t.number for t in ts if t.status == "failed"]
        if failed:
            ax.scatter(failed, [0.97] * len(failed), marker="x", color=STATUS_COLORS["failed"],
                       transform=ax.get_xaxis_transform(), label="failed (no objective)", zorder=3, clip_on=False)
        if _wide(np.array([p[1] for p in scored], dtype=float)):
            ax.set_yscale("log")
        ax.set_title(f"{hpo} ({ts[0].family}): best {best.min():.4g}", fontsize=10)
        ax.set_xlabel("trial")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"validation {LOSS_LABEL}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    return fig


def _axis_values(trials: Sequence[TrialPoint], key: str) -> tuple[np.ndarray, list[str] | None, bool]:
    """Values of one hyperparameter: numbers (log-scaled when wide) or category indices with their labels."""
    raw = [t.config.get(key) for t in trials]
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw):
        vals = np.array(raw, dtype=float)
        if _wide(vals):
            return np.log10(vals), None, True
        return vals, None, False
    labels = sorted({str(v) for v in raw})
    return np.array([labels.index(str(v)) for v in raw], dtype=float), labels, False


def hpo_parallel(trials: Sequence[TrialPoint]) -> Figure | None:
    """Parallel coordinates of the searched hyperparameters, coloured by objective (darker = better), one
    panel per HPO campaign. Hyperparameters that never vary are left out."""
    panels = []
    for hpo, ts in _by_hpo(trials).items():
        scored = [t for t in ts if t.objective is not None]
        keys = sorted({k for t in scored for k in t.config})
        keys = [k for k in keys if all(k in t.config for t in scored)
                and len({repr(t.config[k]) for t in scored}) > 1]
        if len(scored) >= 2 and keys:
            panels.append((hpo, scored, keys))
    if not panels:
        return None
    rows, cols = _grid(len(panels), 2)
    fig = new_figure(5.5 * cols, 3.2 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (hpo, scored, keys) in zip(axes, panels, strict=False):
        obj = np.array([t.objective for t in scored], dtype=float)
        data, names = [], []
        for k in keys:
            vals, labels, logged = _axis_values(scored, k)
            data.append(vals)
            lo, hi = vals.min(), vals.max()
            if labels is not None:
                names.append(f"{k}\n[{' | '.join(labels)}]")
            else:
                lo, hi = (10**lo, 10**hi) if logged else (lo, hi)
                names.append(f"{k}\n{'log ' if logged else ''}[{lo:.3g}, {hi:.3g}]")
        data.append(np.log10(obj) if _wide(obj) else obj)
        names.append(f"objective\n[{obj.min():.3g}, {obj.max():.3g}]")
        mat = np.vstack(data)  # [P+1, T]
        lo, hi = mat.min(axis=1, keepdims=True), mat.max(axis=1, keepdims=True)
        norm = (mat - lo) / np.where(hi > lo, hi - lo, 1.0)
        cmap = matplotlib.colormaps["viridis"]  # low objective (better) = dark
        cnorm = Normalize(obj.min(), obj.max())
        order = np.argsort(-obj)  # best drawn last (on top)
        x = np.arange(len(names))
        for i in order:
            ax.plot(x, norm[:, i], color=cmap(cnorm(obj[i])), lw=1.4, alpha=0.85)
        ax.set_xticks(x, names, fontsize=7)
        ax.set_yticks([])
        for xi in x:
            ax.axvline(xi, color="0.7", lw=0.8)
        ax.set_title(f"{hpo} ({scored[0].family}), {len(scored)} trials", fontsize=10)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return fig


def loss_curves(curve: Curve) -> Figure | None:
    """Training and validation loss per epoch, one panel per head (the weighted total first)."""
    heads = curve.heads()
    if not heads:
        return None
    rows, cols = _grid(len(heads), 4)
    fig = new_figure(3.6 * cols, 2.8 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for k, (ax, head) in enumerate(zip(axes, heads, strict=False)):
        ys = []
        for split, style in (("train", "-"), ("val", "--"), ("test", ":")):
            if (head, split, "loss") in curve.values:
                e, v = curve.values[(head, split, "loss")]
                ax.plot(e, v, style, marker="o", ms=3, label=split)
                ys.append(v)
        if ys and _wide(np.concatenate(ys)):
            ax.set_yscale("log")
        ax.set_title("total (weighted)" if head == "all" else f"head {head}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if k % cols == 0:  # the loss is defined, with its units, in the title
            ax.set_ylabel("loss", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(heads):]:
        ax.set_visible(False)
    fig.suptitle(f"{curve.label} — {LOSS_LABEL}", fontsize=10)
    return fig


def _parity_panel(ax: Any, true: np.ndarray, pred: np.ndarray, unit: str, what: str) -> None:
    mae = float(np.mean(np.abs(pred - true)))
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    pad = 0.05 * (hi - lo or 1.0)
    if true.size > 5000:
        ax.hexbin(true, pred, gridsize=60, bins="log", mincnt=1, cmap="viridis")
    else:
        ax.scatter(true, pred, s=6, alpha=0.6)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="black", lw=0.8)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    ax.set_xlabel(f"reference {what} ({unit})")
    ax.set_ylabel(f"predicted {what} ({unit})")
    ax.set_title(f"{what}: MAE {mae:.3g} {unit}, n={true.size}", fontsize=9)
    ax.grid(alpha=0.3)


def parity(sets: Sequence[ParitySet]) -> Figure | None:
    """Energy (eV/atom) and force-component (eV/Å) parity on the test split, one row per dataset."""
    if not sets:
        return None
    has_f = any(s.force_true is not None for s in sets)
    fig = new_figure(3.6 * (2 if has_f else 1), 3.4 * len(sets))
    axes = fig.subplots(len(sets), 2 if has_f else 1, squeeze=False)
    for row, s in zip(axes, sets, strict=True):
        _parity_panel(row[0], s.energy_true, s.energy_pred, "eV/atom", f"{s.dataset} energy")
        if has_f:
            if s.force_true is not None and s.force_pred is not None:
                _parity_panel(row[1], s.force_true.ravel(), s.force_pred.ravel(), "eV/Å", f"{s.dataset} force")
            else:
                row[1].set_visible(False)
    fig.suptitle(f"{sets[0].label}: test split", fontsize=11)
    return fig


def screening(scr: Screening) -> Figure | None:
    """Energy per atom of the screened structures (the full histogram when reported) with the hits marked,
    and the hits' energy against the ensemble uncertainty when there is one."""
    energies = np.array([h.energy_per_atom for h in scr.hits if h.energy_per_atom is not None], dtype=float)
    if scr.counts is None and energies.size == 0:
        return None
    unc = [(h.energy_per_atom, h.uncertainty) for h in scr.hits
           if h.energy_per_atom is not None and h.uncertainty is not None]
    fig = new_figure(10 if unc else 6, 3.6)
    axes = fig.subplots(1, 2 if unc else 1, squeeze=False)[0]
    ax = axes[0]
    if scr.counts is not None and scr.edges is not None:
        ax.stairs(scr.counts, scr.edges, fill=True, alpha=0.5, label=f"all screened ({scr.screened})")
        ax.set_yscale("log")
        for e in energies:
            ax.axvline(e, color="tab:red", lw=0.6, alpha=0.7)
        ax.plot([], [], color="tab:red", label=f"top hits ({energies.size})")
    else:
        ax.hist(energies, bins=min(30, max(5, energies.size // 2)), color="tab:red", alpha=0.7,
                label=f"top hits ({energies.size}); no full histogram reported")
    ax.set_xlabel("energy per atom (eV/atom)")
    ax.set_ylabel("structures")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if unc:
        e, u = zip(*unc, strict=True)
        axes[1].scatter(e, u, s=14)
        axes[1].set_xlabel("energy per atom (eV/atom)")
        axes[1].set_ylabel("ensemble uncertainty (eV/atom)")
        axes[1].set_title("top hits", fontsize=10)
        axes[1].grid(alpha=0.3)
    return fig


def finetune(pairs: Sequence[FinetunePair]) -> Figure | None:
    """Pre-trained + fine-tuned vs from scratch, per downstream task (lower is better)."""
    pairs = [p for p in pairs if p.finetuned is not None or p.scratch is not None]
    if not pairs:
        return None
    fig = new_figure(max(5.0, 1.4 * len(pairs) + 2), 3.6)
    ax = fig.subplots()
    x = np.arange(len(pairs))
    w = 0.38
    ft = [p.finetuned if p.finetuned is not None else np.nan for p in pairs]
    sc = [p.scratch if p.scratch is not None else np.nan for p in pairs]
    ax.bar(x - w / 2, ft, w, label="pre-trained, fine-tuned", color="tab:blue")
    ax.bar(x + w / 2, sc, w, label="from scratch", color="tab:gray")
    for xi, (a, b) in enumerate(zip(ft, sc, strict=True)):
        if np.isfinite(a) and np.isfinite(b) and a > 0:
            ax.annotate(f"{b / a:.2g}×", (xi, max(a, b)), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [p.task for p in pairs])
    metrics = sorted({p.metric for p in pairs})
    ax.set_ylabel(" / ".join(f"{m} ({metric_unit(m)})" if metric_unit(m) else m for m in metrics))
    ax.set_title("fine-tuning vs from scratch (lower is better; label: scratch / fine-tuned)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def active_rounds(rounds: Sequence[ActiveRound]) -> Figure | None:
    """Held-out force MAE after each active-learning round (members' mean and best) and the base datasets' test
    force MAE beside it, meV/Å: is the loop learning, and is it forgetting?"""
    rows = [r for r in rounds if r.heldout_force_mae_mev_per_a is not None]
    if not rows:
        return None
    fig = new_figure(6.0, 3.6)
    ax = fig.subplots()
    x = [r.round for r in rows]

    def values(name: str) -> np.ndarray:
        return np.array([np.nan if getattr(r, name) is None else float(getattr(r, name)) for r in rows])

    ax.plot(x, values("heldout_force_mae_mev_per_a"), "o-", color="tab:blue", label="held-out (members' mean)")
    ax.plot(x, values("best_heldout_force_mae_mev_per_a"), "s--", color="tab:blue", alpha=0.5,
            label="held-out (best member)")
    base = values("base_test_force_mae_mev_per_a")
    if np.isfinite(base).any():
        ax.plot(x, base, "^-", color="tab:gray", label="base datasets' test")
    ax.set_xticks(x)
    ax.set_xlabel("round (0: before any label)")
    ax.set_ylabel("force MAE (meV/Å)")
    ax.set_title("active learning: error per round (lower is better)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def scaling(rows: Sequence[ScalingRow]) -> Figure | None:
    """Training throughput (graphs/s, all ranks) and scaling efficiency against the number of ranks, one line per
    mode and precision (efficiency 1: perfect scaling from the sweep's smallest point)."""
    rows = [r for r in rows if r.graphs_per_s is not None]
    if not rows:
        return None
    fig = new_figure(9.0, 3.6)
    ax_thr, ax_eff = fig.subplots(1, 2)
    for (mode, prec), style in zip(sorted({(r.mode, r.precision) for r in rows}),
                                   ["o-", "s--", "^-", "v--", "D-", "x--"] * 4, strict=False):
        line = sorted((r for r in rows if (r.mode, r.precision) == (mode, prec)), key=lambda r: r.ranks)
        x = [r.ranks for r in line]
        label = f"{mode}, {prec}"
        ax_thr.plot(x, [r.graphs_per_s for r in line], style, label=label)
        ax_eff.plot(x, [np.nan if r.efficiency is None else r.efficiency for r in line], style, label=label)
    ranks = sorted({r.ranks for r in rows})
    for ax in (ax_thr, ax_eff):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(n) for n in ranks])
        ax.minorticks_off()
        ax.set_xlabel("ranks")
        ax.grid(alpha=0.3)
    ax_thr.set_yscale("log")
    ax_thr.set_ylabel("throughput (graphs/s)")
    ax_thr.set_title("training throughput (higher is better)", fontsize=10)
    ax_eff.axhline(1.0, color="tab:gray", lw=0.8)
    ax_eff.set_ylim(bottom=0)
    ax_eff.set_ylabel("efficiency (1 = perfect)")
    ax_eff.set_title("scaling efficiency", fontsize=10)
    ax_eff.legend(fontsize=8)
    return fig


def resources(rows: Sequence[ResourceRow]) -> Figure | None:
    """CPU-hours and GPU-hours per stage, stacked by site."""
    if not rows:
        return None
    stages = list(dict.fromkeys(r.stage for r in rows))
    sites = sorted({r.site for r in rows})
    has_gpu = any(r.gpu_hours > 0 for r in rows)
    fig = new_figure(5.0 * (2 if has_gpu else 1), 3.6)
    axes = fig.subplots(1, 2 if has_gpu else 1, squeeze=False)[0]
    for ax, attr, label in zip(axes, ("cpu_hours", "gpu_hours"), ("CPU-hours", "GPU-hours"), strict=False):
        bottom = np.zeros(len(stages))
        for site in sites:
            vals = np.array([sum(getattr(r, attr) for r in rows if r.stage == st and r.site == site)
                             for st in stages])
            ax.bar(stages, vals, bottom=bottom, label=site)
            bottom += vals
        ax.set_ylabel(label)
        ax.set_title(f"{label} per stage and site", fontsize=10)
        ax.legend(fontsize=8, title="site", title_fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(axis="x", rotation=30)
    return fig


def timeline(spans: Sequence[AttemptSpan], now: Any) -> Figure | None:
    """Attempts over time, one lane per stage, coloured by how they ended (running ones reach now)."""
    if not spans:
        return None

    lanes = list(dict.fromkeys(s.stage for s in spans))
    fig = new_figure(10, 0.5 * len(lanes) + 1.8)
    ax = fig.subplots()
    seen: set[str | None] = set()
    for lane, stage in enumerate(lanes):
        mine = [s for s in spans if s.stage == stage]
        by_cause: dict[str | None, list[tuple[float, float]]] = defaultdict(list)
        for s in mine:
            start = mdates.date2num(s.start)
            end = mdates.date2num(s.end or now)
            by_cause[s.cause].append((start, max(end - start, 1e-6)))
        for cause, bars in by_cause.items():
            label = (cause or "running") if cause not in seen else None
            seen.add(cause)
            ax.broken_barh(bars, (lane - 0.4, 0.8), facecolors=CAUSE_COLORS.get(cause, "tab:cyan"),
                           edgecolor="white", linewidth=0.3, label=label, alpha=0.85)
    ax.set_yticks(range(len(lanes)), lanes)
    ax.invert_yaxis()
    ax.xaxis_date()
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
    ax.set_xlabel("time (UTC)")
    ax.legend(fontsize=8, ncols=6, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    ax.grid(axis="x", alpha=0.3)
    return fig
