"""Rendering of an IOI study result (:func:`attnsae.studies.ioi.ioi_study`'s dict): PNG plots and a Markdown report.

Plots (matplotlib Agg, no pyplot, each written atomically): ``patching.png`` (per-layer and per-head change of the
logit diff when hook_z at S2 / END comes from the ABC run), ``noising.png`` (share of the logit diff kept under
corruptions A and B), ``ablation_L{layer}.png`` (top features' change by order, and the error term) and
``dfa_L{layer}.png`` (top features' DFA at S2 by source role).
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np

from attnsae.io import atomic_path, atomic_write_json, atomic_write_text
from attnsae.views.numbers import compact

PAPER_KEPT = {"names_filler": 0.93, "connector": 0.43}  # GPT-2 Small, Kissane et al. (layers 5 and 6)
CORRUPTION_NAMES = {"abc": "ABC: S2 a third name (the floor)", "names_filler": "A: new names + filler",
                    "names_filler_shifted": "A, every position shifted", "connector": "B: ' and' replaced"}


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def patching_plot(patching: dict, path: str | os.PathLike) -> None:
    """Per layer (left) and per head (one heatmap per position): patched minus clean mean logit diff."""
    from matplotlib.ticker import MaxNLocator

    roles = list(patching["roles"])
    has_heads = all(patching["roles"][r]["head"] is not None for r in roles)
    fig = _figure(5 + (4.5 * len(roles) if has_heads else 0), 4)
    axes = fig.subplots(1, 1 + (len(roles) if has_heads else 0), squeeze=False)[0]
    for r in roles:
        axes[0].plot(patching["roles"][r]["layer"], marker="o", ms=3, label=f"hook_z at {r}")
    for l in patching.get("layers", []):
        axes[0].axvline(l, color="grey", ls=":", lw=1)
    axes[0].axhline(0, color="black", lw=0.5)
    axes[0].set_xlabel("layer")
    axes[0].set_ylabel("Δ mean logit diff (patched − clean)")
    axes[0].set_title(f"per layer (clean {patching['clean']:.2f}, ABC {patching['corrupted']:.2f})", fontsize=9)
    axes[0].legend(fontsize=8)
    for ax, r in zip(axes[1:], roles if has_heads else []):
        h = np.asarray(patching["roles"][r]["head"], dtype=float)  # a layer not scanned per head: NaN, in grey
        lim = max(float(np.nanmax(np.abs(h))), 1e-6)
        cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="#d9d9d9")
        im = ax.imshow(h.T, cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xlabel("layer")
        ax.set_ylabel("head")
        scanned = "" if not np.isnan(h).any() else " (grey: layer not scanned per head)"
        ax.set_title(f"per head, hook_z at {r}{scanned}", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    for i, ax in enumerate(axes):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers (and heads) are integers
        if i:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _save(fig, Path(path))


def noising_plot(noising: dict, path: str | os.PathLike) -> None:
    """Share of the clean logit diff kept when S2's hook_z comes from each corruption, overall and per order."""
    kinds = list(noising)
    groups = [g for g in ("all", "ABBA", "BABA") if all(g in noising[k]["kept"] for k in kinds)]
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    x = np.arange(len(kinds))
    w = 0.8 / max(len(groups), 1)
    for i, g in enumerate(groups):
        ax.bar(x + (i - (len(groups) - 1) / 2) * w, [noising[k]["kept"][g] for k in kinds], w, label=g)
    for j, k in enumerate(kinds):
        if k in PAPER_KEPT:
            ax.plot([j - 0.45, j + 0.45], [PAPER_KEPT[k]] * 2, color="black", ls="--", lw=1)
    ax.set_xticks(x, [CORRUPTION_NAMES.get(k, k) for k in kinds])
    ax.axhline(1, color="grey", lw=0.5)
    ax.set_ylabel("logit diff kept (patched / clean)")
    layers = noising[kinds[0]]["layers"] if kinds else []
    ax.set_title(f"noising hook_z at S2, layers {layers} (dashed: GPT-2 Small, paper)", fontsize=9)
    ax.legend(fontsize=8)
    _save(fig, Path(path))


def ablation_plot(ablation: dict, path: str | os.PathLike, top: int = 20) -> None:
    """Top features by |Δ logit diff| when zeroed at S2 (bars per order), the SAE error term last."""
    rows = ablation["features"][:top]
    labels = [f"f{r['feature']}" for r in rows] + ["SAE error"]
    deltas = [r["delta"] for r in rows] + [ablation["error"]["delta"]]
    groups = [g for g in ("ABBA", "BABA") if all(g in d for d in deltas)] or ["all"]
    fig = _figure(max(6, 0.45 * len(labels) + 2), 4)
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    w = 0.8 / len(groups)
    for i, g in enumerate(groups):
        ax.bar(x + (i - (len(groups) - 1) / 2) * w, [d[g] for d in deltas], w, label=g)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xticks(x, labels, rotation=60, fontsize=7)
    ax.set_ylabel("Δ logit diff (ablated − clean)")
    ax.set_title(f"layer {ablation['layer']}: zero-ablating a feature at each prompt's S2 (error term kept)",
                 fontsize=9)
    ax.legend(fontsize=8)
    _save(fig, Path(path))


def dfa_plot(reading: list[dict], path: str | os.PathLike) -> None:
    """Heatmap: features (rows) x source roles (columns) of mean DFA at S2 over the prompts where each fires."""
    roles = list(reading[0]["by_role"]["all"])
    m = np.array([[r["by_role"]["all"][s] for s in roles] for r in reading])
    fig = _figure(1.0 * len(roles) + 2, 0.4 * len(reading) + 1.6)
    ax = fig.add_subplot()
    lim = max(float(np.abs(m).max()), 1e-6)
    im = ax.imshow(m, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(roles)), roles)
    ax.set_yticks(range(len(reading)), [f"f{r['feature']} ({r['n_active']})" for r in reading], fontsize=8)
    ax.set_title(f"layer {reading[0]['layer']}: DFA at S2 by source (prompts where active)", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    _save(fig, Path(path))


def ioi_plots(result: dict, folder: str | os.PathLike) -> list[str]:
    """Every plot of a result into ``folder``; returns their file names."""
    folder = Path(folder)
    names = ["patching.png", "noising.png"]
    patching_plot(result["patching"], folder / names[0])
    noising_plot(result["noising"], folder / names[1])
    for layer, ab in result["ablation"].items():
        if ab["features"]:
            names.append(f"ablation_L{layer}.png")
            ablation_plot(ab, folder / names[-1])
        if result["dfa"].get(layer):
            names.append(f"dfa_L{layer}.png")
            dfa_plot(result["dfa"][layer], folder / names[-1])
    return names


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def ioi_markdown(result: dict, plots: list[str] = ()) -> str:
    """The Markdown report of a result."""
    meta, v = result["meta"], result["validation"]["summary"]
    lines = [f"# IOI on {meta['model']}", "",
             f"{meta['n_prompts']} prompts (seed {meta['seed']}), metric logit(IO) − logit(S) at END.", "",
             "## Validation", ""]
    lines += _table(["group", "prompts", "mean logit diff", "accuracy"],
                    [[k, s["n"], f"{s['mean_logit_diff']:.2f}", f"{s['accuracy']:.0%}"] for k, s in v.items()])
    p = result["patching"]
    lines += ["", "## Circuit layers (patching hook_z from the ABC run: S2 replaced by a third name)", "",
              (f"Clean mean logit diff {p['clean']:.2f}, ABC run {p['corrupted']:.2f}. Layers picked by the S2 "
               f"scan: **{p['layers']}**."), ""]
    for role, heads in p.get("top_heads", {}).items():
        if heads:
            lines.append(f"- top heads at {role}: " + ", ".join(f"L{h['layer']}H{h['head']} ({h['delta']:+.2f})"
                                                                for h in heads))
    lines += ["", "## Noising hook_z at S2 of the picked layers", ""]
    def of_floor(n: dict) -> str:
        v = (n.get("removed_of_floor") or {}).get("all")
        return "—" if v is None else f"{v:.0%}"

    lines += _table(["corruption", "example", "kept (all)", "ABBA", "BABA", "loss, share of the floor's",
                     "GPT-2 Small (paper)"],
                    [[CORRUPTION_NAMES.get(k, k), f"`{n['example']}`", f"{n['kept']['all']:.0%}",
                      f"{n['kept'].get('ABBA', float('nan')):.0%}", f"{n['kept'].get('BABA', float('nan')):.0%}",
                      of_floor(n), f"{PAPER_KEPT[k]:.0%}" if k in PAPER_KEPT else "—"]
                     for k, n in result["noising"].items()])
    for layer, ab in result["ablation"].items():
        lines += ["", f"## Feature ablation at S2, layer {layer} (SAE spliced, error term kept)", "",
                  (f"{ab['n_candidates']} features active at S2 ablated one at a time, each at each prompt's own "
                   f"S2 (L0 at S2 {ab['l0_at_role']:.1f}; the splice alone moves the logit diff by at most "
                   f"{ab['spliced_max_abs_change']:.2g})."), ""]
        rows = [[f"f{r['feature']}", r["n_active"], f"{r['delta']['all']:+.3f}",
                 f"{r['delta'].get('ABBA', float('nan')):+.3f}", f"{r['delta'].get('BABA', float('nan')):+.3f}"]
                for r in ab["features"][:15]]
        e = ab["error"]["delta"]
        rows.append(["SAE error", "-", f"{e['all']:+.3f}", f"{e.get('ABBA', float('nan')):+.3f}",
                     f"{e.get('BABA', float('nan')):+.3f}"])
        lines += _table(["feature", "prompts active", "Δ all", "Δ ABBA", "Δ BABA"], rows)
        reading = result["dfa"].get(layer) or []
        if reading:
            roles = list(reading[0]["by_role"]["all"])
            lines += ["", "DFA at S2 by source role (mean over the prompts where the feature fires):", ""]
            lines += _table(["feature"] + roles, [[f"f{r['feature']}"] + [f"{r['by_role']['all'][s]:+.2f}"
                                                                          for s in roles] for r in reading])
    if plots:
        lines += ["", "## Plots", ""] + [f"![{n}]({n})" for n in plots]
    return "\n".join(lines) + "\n"


def write_ioi_report(result: dict, folder: str | os.PathLike) -> None:
    """``ioi.json``, ``report.md`` and the PNG plots of an IOI result, into the existing ``folder`` (the job's
    temporary folder: :func:`attnsae.jobs.studies.run_ioi` puts it in place whole)."""
    folder = Path(folder)
    atomic_write_json(compact(result), folder / "ioi.json")
    atomic_write_text(ioi_markdown(result, ioi_plots(result, folder)), folder / "report.md")
