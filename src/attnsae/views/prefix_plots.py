"""Plots of the long- vs short-prefix induction study (:mod:`attnsae.studies.prefix_induction`), from its plain data.

Each function draws on matplotlib's Agg canvas (no pyplot), writes one PNG atomically and returns the figure, so a
test can read back what was drawn (every line carries the label of the series it plots).
"""

from __future__ import annotations

import os

import numpy as np

from attnsae.io import atomic_path


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def sweep_plot(sweep: dict, path: str | os.PathLike, highlight: list[str] = (), title: str = "") -> object:
    """One line per head: induction score against prefix length (``sweep``: ``Sweep.to_dict()``). Highlighted heads
    are drawn in colour with their 95% band and named in the legend; the others are thin grey lines, each still
    labelled with its own head's name."""
    fig = _figure(8, 4.8)
    ax = fig.add_subplot()
    x = sweep["lengths"]
    for name, y in sweep["series"].items():
        if name in highlight:
            continue
        ax.plot(x, y, color="#b0b0b0", lw=0.8, label=name)
    for name in highlight:  # drawn last, on top
        y, ci = np.array(sweep["series"][name]), np.array(sweep["ci95"][name])
        (line,) = ax.plot(x, y, marker="o", lw=2, label=name)
        ax.fill_between(x, y - ci, y + ci, color=line.get_color(), alpha=0.2)
    handles = [l for l in ax.get_lines() if l.get_label() in highlight]
    ax.legend(handles=handles, title="induction heads" if handles else None, fontsize=8)
    ax.set_xticks(x)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("prefix length (tokens repeated before the induction target)")
    ax.set_ylabel("attention to the induction target")
    ax.set_title(title or f"induction score by prefix length ({sweep['n_seqs']} sequences of {sweep['seq_len']})",
                 fontsize=10)
    _save(fig, path)
    return fig


def intervention_plot(text: dict, path: str | os.PathLike, title: str = "") -> object:
    """Left: per head, mean attention on its prefix >= 2 pairs before and after breaking the longer prefix (95%
    intervals). Right: the same by prefix length, before (solid) and after (dashed)."""
    fig = _figure(12, 4.6)
    ax, ax2 = fig.subplots(1, 2)
    heads = [h for h, r in text["heads"].items() if r["n"]]
    x = np.arange(len(heads))
    rows = [text["heads"][h] for h in heads]
    for off, key, colour in ((-0.2, "before", "#1f77b4"), (0.2, "after", "#d62728")):
        ax.bar(x + off, [r[key] for r in rows], width=0.4, yerr=[r[key + "_ci95"] for r in rows], capsize=3,
               color=colour, label=f"{key} the intervention")
    for xi, r in zip(x, rows):
        ax.text(xi, 0.01, f"n={r['n']}", ha="center", va="bottom", fontsize=7, color="white")
    ax.set_xticks(x, heads)
    ax.set_ylabel("mean attention to the induction source")
    ax.set_title("token src−2 replaced (prefix ≥ 2 pairs)", fontsize=10)
    ax.legend(fontsize=8)
    for h in heads:
        by = text["heads"][h]["by_prefix"]
        ks = sorted(by, key=int)
        (line,) = ax2.plot([int(k) for k in ks], [by[k]["before"] for k in ks], marker="o", label=f"{h} before")
        ax2.plot([int(k) for k in ks], [by[k]["after"] for k in ks], marker="x", ls="--", color=line.get_color(),
                 label=f"{h} after")
    ax2.xaxis.get_major_locator().set_params(integer=True)
    ax2.set_xlabel("prefix length on text (last bin: that length or more)")
    ax2.set_ylabel("mean attention")
    ax2.set_ylim(0, 1)
    ax2.legend(fontsize=7, ncol=2)
    fig.suptitle(title or "breaking the longer prefix on text")
    _save(fig, path)
    return fig


def feature_heads_plot(features: dict, path: str | os.PathLike, max_features: int = 16, title: str = "") -> object:
    """Per induction feature (most firings first), two stacked bars of DFA head shares: its short-prefix (``k = 1``)
    and long-prefix (``k >= 2``) firings, each bar annotated with its number of firings."""
    heads = features["heads"]
    feats = sorted(features["features"], key=lambda f: -features["features"][f]["n_firings"])[:max_features]
    fig = _figure(10, 1.2 + 0.45 * max(len(feats), 1))
    ax = fig.add_subplot()
    colours = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf")
    labels, y = [], 0
    for f in feats:
        for kind in ("short", "long"):
            g = features["features"][f][kind]
            left = 0.0
            for h, s in enumerate(g["head_share"]):
                ax.barh(y, s, left=left, color=colours[h % len(colours)], label=heads[h] if y == 0 else None)
                left += s
            ax.text(1.01, y, f"n={g['n']}", va="center", fontsize=7)
            labels.append(f"#{f} {'k=1' if kind == 'short' else 'k≥2'}")
            y += 1
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("share of the feature's DFA by head (positive part)")
    ncol = min(len(heads), 12)
    ax.legend(fontsize=7, ncol=ncol, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    if not feats:
        ax.text(0.5, 0.5, "no induction features", ha="center", transform=ax.transAxes)
    rows = -(-len(heads) // max(ncol, 1))  # legend rows between the title and the axes
    ax.set_title(title or "induction features: which head carries short- and long-prefix firings", fontsize=10,
                 pad=10 + 14 * rows)
    _save(fig, path)
    return fig


def specificity_plot(entries: list[dict], path: str | os.PathLike) -> object:
    """One row per (feature, proxy): the histogram of positive activations split by whether the proxy holds, and
    its expected-value variant (each bin weighted by its activations)."""
    fig = _figure(11, 2.4 * max(len(entries), 1))
    axes = fig.subplots(max(len(entries), 1), 2, squeeze=False)
    for (ax, ax2), e in zip(axes, entries):
        edges = np.array(e["edges"])
        w, left = np.diff(edges), edges[:-1]
        for a, key, what in ((ax, "count", "firings"), (ax2, "mass", "activation mass (expected value)")):
            a.bar(left, e[f"{key}_holds"], width=w, align="edge", color="#d62728", label="proxy holds")
            a.bar(left, e[f"{key}_not"], width=w, align="edge", bottom=e[f"{key}_holds"], color="#b0b0b0",
                  label="proxy does not hold")
            a.set_ylabel(what, fontsize=8)
            a.set_xlabel("activation", fontsize=8)
        ax.set_title(f"#{e['feature']}: {e['description']} (precision {e['precision']:.0%}, recall "
                     f"{e['recall']:.0%})", fontsize=8)
        ax2.set_title(f"share of activation mass where it holds: {e['mass_precision']:.0%}", fontsize=8)
        ax.legend(fontsize=7)
    _save(fig, path)
    return fig
