"""A graph file's picture (PNG): x = token position, y = layer, the target on top.

Rows from the bottom: the embeddings, then per layer its readers (features or heads) and, just above, its leaves
(SAE error, constant output, MLP output), then the target. Nodes are sized by |effect| on the target, filled by
kind; edges are drawn blue where they raise the node they feed and red where they lower it, wider for larger
|weight| (the heaviest few hundred). Several nodes at one (row, position) fan out sideways, most effective in the
middle.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict

from attnsae.io import atomic_path

SOFTWARE = "attnsae graph"  # the PNG's Software text: how a later run knows the file is its own
COLOURS = {"feature": "#4c78a8", "head": "#f58518", "error": "#9d9d9d", "bias": "#c7c7c7", "mlp": "#54a24b",
           "token": "#b279a2", "position": "#d4a6c8", "target": "#e45756"}


def _row(kind: str, layer: int, n_layers: int) -> float:
    if kind in ("token", "position"):
        return 0.0
    if kind == "target":
        return 2 * n_layers + 1.0
    return 2 * layer + (1.0 if kind in ("feature", "head") else 1.6)


def graph_picture(d: dict, path: str | os.PathLike, title: str | None = None, labels: int = 12,
                  max_edges: int = 400) -> None:
    """Draw graph file dict ``d`` (:mod:`attnsae.graph.files`) into PNG ``path`` (atomically); the ``labels`` nodes
    of largest |effect| are named, and the ``max_edges`` edges of largest |weight| drawn (the title says so)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    nodes, edges, L = d["nodes"], d["edges"], d["n_layers"]
    S = len(d["prompt_tokens"])
    n = len(nodes["id"])
    groups: dict[tuple[float, int], list[int]] = defaultdict(list)
    for i in range(n):
        groups[_row(nodes["kind"][i], nodes["layer"][i], L), nodes["pos"][i]].append(i)
    xy: dict[str, tuple[float, float]] = {}
    for (row, pos), ids in groups.items():
        ids.sort(key=lambda i: -abs(nodes["effect"][i]))
        for k, i in enumerate(ids):  # 0, +1, -1, +2, -2 ... times a step that keeps the fan inside the column
            offset = ((k + 1) // 2) * (1 if k % 2 else -1) * min(0.12, 0.8 / max(len(ids), 1))
            xy[nodes["id"][i]] = (pos + offset, row)
    big = max((abs(e) for e in nodes["effect"]), default=1.0) or 1.0
    heavy = max((abs(w) for w in edges["weight"]), default=1.0) or 1.0

    fig = Figure(figsize=(max(8.0, 0.45 * S + 2), 2.2 + min(0.9, 12 / max(L, 1)) * L), dpi=110)
    ax = fig.add_subplot()
    drawn = sorted(zip(edges["source"], edges["target"], edges["weight"]), key=lambda e: abs(e[2]))[-max_edges:]
    for s, t, w in drawn:
        (x0, y0), (x1, y1) = xy[s], xy[t]
        ax.plot([x0, x1], [y0, y1], color="#2166ac" if w > 0 else "#b2182b", lw=0.3 + 3 * abs(w) / heavy,
                alpha=0.25 + 0.6 * abs(w) / heavy, zorder=1)
    for i in range(n):
        x, y = xy[nodes["id"][i]]
        size = 12 + 260 * math.sqrt(abs(nodes["effect"][i]) / big)
        ax.scatter([x], [y], s=size, color=COLOURS.get(nodes["kind"][i], "#333333"), edgecolors="black",
                   linewidths=0.4, zorder=2)
    named = [i for i in range(n) if abs(nodes["effect"][i]) >= 0.02 * big]
    for i in sorted(named, key=lambda i: -abs(nodes["effect"][i]))[:labels]:
        x, y = xy[nodes["id"][i]]
        ax.annotate(f"{nodes['id'][i]} {nodes['effect'][i]:+.2g}", (x, y), xytext=(4, 4), textcoords="offset points",
                    fontsize=7, zorder=3)
    ax.set_xticks(range(S))
    ax.set_xticklabels([t.replace("\n", "⏎") for t in d["prompt_tokens"]], rotation=60, fontsize=7, ha="right")
    ticks = [0.0] + [2 * l + 1.0 for l in range(L)] + [2 * L + 1.0]
    ax.set_yticks(ticks)
    ax.set_yticklabels(["embed"] + [f"L{l}" for l in range(L)] + ["target"], fontsize=8 if L <= 12 else 6)
    ax.set_xlim(-0.7, S - 0.3)
    ax.set_ylim(-0.6, 2 * L + 1.6)
    for kind, colour in COLOURS.items():
        if kind in nodes["kind"]:
            ax.scatter([], [], s=30, color=colour, edgecolors="black", linewidths=0.4, label=kind)
    ax.legend(fontsize=7, loc="upper left", ncol=4, frameon=False)
    t = d["target"]
    shown = f"{len(drawn)} of {len(edges['weight'])} edges drawn" if len(drawn) < len(edges["weight"]) else \
        f"{len(drawn)} edges"
    ax.set_title(title or f"{d['model']}: {t['label']} at position {t['pos']} — {d['pruning']['nodes']} nodes, {shown}",
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        FigureCanvasAgg(fig).print_png(str(tmp), metadata={"Software": SOFTWARE})
