"""Plots as PNG files, drawn with matplotlib's Agg canvas (no pyplot, no global state, no display needed)."""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from attnsae.evals.eval_report import EvalReport, SAEEval
from attnsae.io import atomic_path


def _evals(reports: EvalReport | SAEEval | Sequence[EvalReport | SAEEval]) -> list[SAEEval]:
    items = reports if isinstance(reports, (list, tuple)) else [reports]
    out: list[SAEEval] = []
    for r in items:
        out.extend(r.saes if isinstance(r, EvalReport) else [r])
    return out


def density_histogram(reports: EvalReport | SAEEval | Sequence[EvalReport | SAEEval],
                      path: str | os.PathLike, title: str = "feature density") -> None:
    """One PNG: for each SAE a histogram of log10(feature firing frequency), as step outlines on shared bins.

    Features that never fired (log10 of 0) are counted in a separate leftmost bin labelled "dead", and their share is
    given in the legend. The file is written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    evals = _evals(reports)
    freqs = [np.asarray(s.feature_frequency, dtype=np.float64) for s in evals]
    live = np.concatenate([f[f > 0] for f in freqs] + [np.ones(1)])
    lo = math.floor(np.log10(live.min()) * 2) / 2 - 0.5  # half-decade grid below the rarest live feature
    edges = np.linspace(lo, 0.0, round(-lo * 10) + 1)  # bins a tenth of a decade wide, the last ending at 0
    dead_x = lo - 0.5  # the "dead" bin sits half a decade left of the live bins

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for s, f in zip(evals, freqs):
        n_dead = int((f == 0).sum())
        unseen = (f", Chao1: ~{s.unseen['expected_live_unseen']:.0f} of them live but rare" if s.unseen else "")
        label = (f"{s.name} (layer {s.layer}, {f.size} features, {n_dead / max(f.size, 1):.1%} never fired in "
                 f"{s.n_tokens:,} tokens{unseen})")
        counts, _ = np.histogram(np.log10(f[f > 0]), bins=edges)
        step = ax.stairs(counts, edges, label=label)
        if n_dead:
            ax.bar(dead_x, n_dead, width=0.3, fill=False, edgecolor=step.get_edgecolor(), hatch="//")
    ax.axvline(-1, color="grey", linestyle=":", linewidth=1)  # the "dense" threshold (10% of tokens)
    ticks = list(range(math.ceil(lo), 1))
    ax.set_xticks([dead_x] + ticks, ["never\nfired"] + [f"{t}" for t in ticks])
    ax.set_xlabel("log10 firing frequency (fraction of tokens a feature is active on)")
    ax.set_ylabel("features")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def recovery_plot(report: EvalReport, path: str | os.PathLike, title: str = "CE recovered") -> None:
    """One PNG: per SAE, CE recovered against zero and mean ablation and the explained variance, each with its 95%
    bootstrap interval as an error bar (:mod:`attnsae.evals.intervals`) and a line at 100%. Written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6, 0.5 * len(report.saes) + 3), 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(report.saes))
    for i, (key, label) in enumerate((("ce_recovered_zero", "CE recovered (zero-ablation)"),
                                      ("ce_recovered_mean", "CE recovered (mean-ablation)"),
                                      ("explained_variance", "explained variance"))):
        y = np.array([getattr(s, key) for s in report.saes], dtype=np.float64)
        iv = np.array([s.intervals.get(key, [np.nan, np.nan]) for s in report.saes], dtype=np.float64)
        err = np.abs(np.stack([y - iv[:, 0], iv[:, 1] - y]))
        ax.errorbar(x + (i - 1) * 0.2, y, yerr=np.where(np.isfinite(err), err, 0), fmt="o", ms=4, capsize=3,
                    label=label)
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    names = [s.name for s in report.saes]
    crowded = sum(len(n) for n in names) * 7 > fig.get_figwidth() * fig.dpi * 0.8  # ~7 px a character at 10 pt
    ax.set_xticks(x, names, rotation=90 if len(x) > 12 else 30 if crowded else 0, ha="right" if crowded else "center")
    ax.set_ylabel("share (1 = 100%)")
    b = report.bootstrap
    ax.set_title(title + (f" — {b['level']:.0%} intervals, bootstrap over {report.n_contexts:,} contexts" if b else ""),
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


__all__ = ["density_histogram", "recovery_plot"]


def families_plot(counts: dict[str, dict[str, int]], stats: dict[str, list[dict]], labels: dict[str, list[str]],
                  path: str | os.PathLike, thresholds: dict, title: str = "feature families") -> None:
    """Left: share of live features per family, one stacked bar per SAE. Right: every live feature's induction
    share against its short-range (local) share, coloured by family, with the thresholds drawn. Written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from attnsae.studies.results import FAMILIES

    colours = {"induction": "#d62728", "short-range": "#1f77b4", "long-range": "#2ca02c", "unclear": "#b0b0b0"}
    fig = Figure(figsize=(12, 4.6), dpi=110)
    FigureCanvasAgg(fig)
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    names = list(counts)
    left = np.zeros(len(names))
    for fam in FAMILIES:
        share = np.array([counts[n][fam] / max(counts[n]["live"], 1) for n in names])
        ax.barh(names, share, left=left, color=colours[fam], label=fam)
        for y, (x0, w, n) in enumerate(zip(left, share, names)):
            if w > 0.06:
                ax.text(x0 + w / 2, y, f"{counts[n][fam]}", ha="center", va="center", fontsize=8, color="white")
        left += share
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of live features")
    ax.invert_yaxis()
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, fontsize=8, frameon=False)
    markers = "os^Dv<>"
    for m, n in enumerate(names):
        for fam in FAMILIES:
            pts = [(s["local"], s["induction"]) for s, lab in zip(stats[n], labels[n]) if lab == fam and s]
            if pts:
                x, y = zip(*pts)
                ax2.scatter(x, y, s=6, alpha=0.5, color=colours[fam], marker=markers[m % len(markers)],
                            label=f"{n} {fam}" if len(names) > 1 else fam)
    ax2.axhline(thresholds["induction"], color="#d62728", lw=0.8, ls="--")
    ax2.axvline(thresholds["local"], color="#1f77b4", lw=0.8, ls="--")
    ax2.set_xlabel(f"short-range share (within {thresholds['local_window']} tokens)")
    ax2.set_ylabel("induction share")
    ax2.set_xlim(-0.02, 1.02)
    ax2.set_ylim(-0.02, 1.02)
    ax2.legend(fontsize=7, markerscale=2, loc="upper right", frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
