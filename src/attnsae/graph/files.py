"""A graph as a JSON file (``attnsae graph --out graph.json``), read back and checked from the file alone.

Schema (columns, so a file of thousands of edges stays small; node ids are readable names, :meth:`Graph.name`)::

    {"format": "attnsae-graph", "version": 1, "model": str, "prompt": str | None,
     "tokens": [int] * S, "prompt_tokens": [str] * S,
     "target": {"kind", "pos", "label", "value", "token_ids", "layer", "feature", "probability"},
     "n_layers": int, "sae_layers": [int], "saes": [str], "mlp_mode": "leaf" | "linear",
     "pruning": {"node_threshold", "edge_threshold", "nodes", "edges", "nodes_unpruned", "edges_unpruned"},
     "scores": {...} (attnsae.graph.prune.scores), "decomposition": {...} (Graph.decomposition),
     "closure_max_rel_error": float, "seconds": {...}, "faithfulness": {...} | null, "qk": [...] | null,
     "nodes": {"id", "kind", "layer", "pos", "index", "value", "const", "effect", "influence": [...] * n},
     "edges": {"source": [id], "target": [id], "weight": [float]}}

``influence`` is circuit-tracer's cumulative influence score (smaller: more influential). Weights keep 7 significant
digits (fp32), so :func:`closure_of` checks an unpruned file (both thresholds 1) to fp32 rounding.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from attnsae.errors import AttnsaeError
from attnsae.graph.graph import KINDS, Graph, reader_kinds
from attnsae.graph.prune import PruneResult

FORMAT = "attnsae-graph"


def _g7(v: float) -> float:
    return float(f"{v:.7g}")


def graph_dict(graph: Graph, pruned: PruneResult, node_threshold: float, edge_threshold: float,
               extra: dict | None = None) -> dict:
    """The file's dict for ``graph`` with the nodes and edges ``pruned`` keeps."""
    keep = pruned.node_mask.nonzero()[:, 0].tolist()
    names = {i: graph.name(i) for i in keep}
    edges = pruned.edge_mask.nonzero()[:, 0]
    cols = {"id": [names[i] for i in keep], "kind": [KINDS[int(graph.kind[i])] for i in keep],
            "layer": graph.layer[keep].tolist(), "pos": graph.pos[keep].tolist(), "index": graph.index[keep].tolist(),
            "value": [_g7(v) for v in graph.value[keep].tolist()],
            "const": [_g7(v) for v in graph.const[keep].tolist()],
            "effect": [_g7(v) for v in graph.effect[keep].tolist()],
            "influence": [_g7(v) for v in pruned.cumulative_scores[keep].tolist()]}
    return {"format": FORMAT, "version": 1, "model": graph.model, "prompt": None, "tokens": graph.tokens,
            "prompt_tokens": graph.token_strs, "target": graph.target, "n_layers": graph.n_layers,
            "sae_layers": graph.sae_layers, "saes": [], "mlp_mode": graph.mlp_mode,
            "pruning": {"node_threshold": node_threshold, "edge_threshold": edge_threshold, "nodes": len(keep),
                        "edges": len(edges), "nodes_unpruned": graph.n_nodes, "edges_unpruned": graph.n_edges},
            "seconds": graph.seconds, "faithfulness": None, "qk": None, **(extra or {}),
            "nodes": cols,
            "edges": {"source": [names[int(i)] for i in graph.src[edges]],
                      "target": [names[int(i)] for i in graph.dst[edges]],
                      "weight": [_g7(v) for v in graph.weight[edges].tolist()]}}


def read_graph(path: str | Path) -> dict:
    """A graph file written by attnsae, checked for its format; one-line errors otherwise."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AttnsaeError(f"cannot read graph {path}: {e}") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise AttnsaeError(f"{path} is not an attnsae graph file (no \"format\": \"{FORMAT}\")")
    return d


def closure_of(d: dict) -> tuple[float, int]:
    """From a graph file's dict: the largest ``|const + Σ incoming − value|`` relative to ``|const| + Σ |incoming|``
    over the readers whose every incoming edge the file kept, and how many readers that was (all of them when the
    file is unpruned)."""
    nodes, edges = d["nodes"], d["edges"]
    at = {n: i for i, n in enumerate(nodes["id"])}
    total = [0.0] * len(at)
    size = [0.0] * len(at)
    for t, w in zip(edges["target"], edges["weight"]):
        total[at[t]] += w
        size[at[t]] += abs(w)
    unpruned = d["pruning"]["node_threshold"] == 1 and d["pruning"]["edge_threshold"] == 1
    worst, n = 0.0, 0
    for i, kind in enumerate(nodes["kind"]):
        if kind not in reader_kinds(d.get("mlp_mode", "leaf")) or not unpruned:
            continue
        scale = abs(nodes["const"][i]) + size[i]
        err = abs(nodes["const"][i] + total[i] - nodes["value"][i])
        worst = max(worst, err / scale if scale > 0 else (0.0 if err == 0 else math.inf))
        n += 1
    return worst, n
