"""A graph in the attribution-graph JSON that circuit-tracer writes (``circuit_tracer.utils.create_graph_files``,
version 0.5.0) and its local viewer and Neuronpedia's read: ``{"metadata", "qParams", "nodes", "links"}``.

circuit-tracer's node kinds are transcoder features, MLP reconstruction errors, embeddings and logits. An attnsae
graph maps onto them so the viewer draws it unchanged:

* a feature ``L/j@p`` -> ``"cross layer transcoder"`` node ``{L}_{j}_{p}`` (``feature`` = Cantor pairing of L, j);
* a head ``L.H@p`` -> the same type, feature index ``HEAD_OFFSET + h``, labelled ``head L.H``;
* an SAE error, an MLP output and a constant output -> ``"mlp reconstruction error"`` nodes ``{k}_{L}_{p}`` with
  k = 0, 1, 2 (the viewer's only leaf type), labelled ``Err: SAE L``, ``MLP L (leaf)``, ``bias L``;
* the token and position embeddings at ``p`` -> one ``"embedding"`` node ``E_{token}_{p}`` (their edges add: the
  sum of two exact contributions);
* the target -> a ``"logit"`` node ``{n_layers + 1}_{token}_{p}`` whose label carries ``(p=...)`` as the viewer reads.

``influence`` is the cumulative influence score and ``activation`` the node's value. :func:`write_viewer_files`
also writes ``graph-metadata.json``, the index circuit-tracer's local server lists.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from attnsae.graph.graph import KINDS, Graph
from attnsae.graph.prune import PruneResult

HEAD_OFFSET = 10_000_000  # a head's feature index in the viewer: above any SAE's features
LEAF_CODE = {"error": 0, "mlp": 1, "bias": 2, "mlp_rest": 3}


def cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def _node(graph: Graph, i: int, influence: float) -> dict:
    k, l, p, j = KINDS[int(graph.kind[i])], int(graph.layer[i]), int(graph.pos[i]), int(graph.index[i])
    base = {"layer": str(l), "ctx_idx": p, "token_prob": 0.0, "is_target_logit": False, "run_idx": 0,
            "reverse_ctx_idx": 0, "influence": influence, "activation": float(graph.value[i])}
    if k in ("feature", "head"):
        f = j if k == "feature" else HEAD_OFFSET + j
        label = f"L{l}/{j} attention feature" if k == "feature" else f"head L{l}.H{j} (output at {p})"
        return {**base, "node_id": f"{l}_{f}_{p}", "feature": cantor(l, f), "feature_type": "cross layer transcoder",
                "jsNodeId": f"{l}_{f}-0", "clerp": label}
    if k in LEAF_CODE:
        label = {"error": f"Err: SAE L{l}", "mlp": f"MLP L{l}" + (" (linear part)" if graph.mlp_mode == "linear"
                                                                    else " (leaf)"),
                 "bias": f"bias L{l}", "mlp_rest": f"Err: MLP L{l} beyond first order"}[k]
        return {**base, "node_id": f"{LEAF_CODE[k]}_{l}_{p}", "feature": -1, "feature_type": "mlp reconstruction error",
                "jsNodeId": f"{LEAF_CODE[k]}_{l}_{p}-0", "clerp": label}
    if k in ("token", "position"):
        t = graph.tokens[p]
        return {**base, "layer": "E", "node_id": f"E_{t}_{p}", "feature": p, "feature_type": "embedding",
                "jsNodeId": f"E_{t}-{p}", "clerp": ""}
    tgt = graph.target
    prob = tgt.get("probability") or 1.0
    vocab = tgt["token_ids"][0] if tgt["token_ids"] else HEAD_OFFSET
    return {**base, "layer": str(graph.n_layers + 1), "node_id": f"{graph.n_layers + 1}_{vocab}_{p}",
            "feature": vocab, "feature_type": "logit", "token_prob": prob, "is_target_logit": True,
            "jsNodeId": f"L_{vocab}-{p}", "clerp": f"Output {tgt['label']} (p={prob:.3f})"}


def circuit_tracer_json(graph: Graph, pruned: PruneResult, slug: str, node_threshold: float,
                        prompt: str | None = None, saes: list[str] | None = None) -> dict:
    """The viewer's JSON for the nodes and edges ``pruned`` keeps."""
    nodes: dict[str, dict] = {}
    ids: dict[int, str] = {}
    for i in pruned.node_mask.nonzero()[:, 0].tolist():
        n = _node(graph, i, float(pruned.cumulative_scores[i]))
        if n["node_id"] in nodes:  # the position embedding joins its token's node
            nodes[n["node_id"]]["activation"] += n["activation"]
            nodes[n["node_id"]]["influence"] = min(nodes[n["node_id"]]["influence"], n["influence"])
        nodes.setdefault(n["node_id"], n)
        ids[i] = n["node_id"]
    links: dict[tuple[str, str], float] = defaultdict(float)
    e = pruned.edge_mask.nonzero()[:, 0]
    for s, t, w in zip(graph.src[e].tolist(), graph.dst[e].tolist(), graph.weight[e].tolist()):
        links[ids[s], ids[t]] += w
    meta = {"slug": slug, "scan": "attnsae", "transcoder_list": list(saes or []), "prompt_tokens": graph.token_strs,
            "prompt": prompt if prompt is not None else "".join(graph.token_strs), "node_threshold": node_threshold,
            "schema_version": 1}
    return {"metadata": meta,
            "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
            "nodes": list(nodes.values()),
            "links": [{"source": s, "target": t, "weight": w} for (s, t), w in links.items()]}


def write_viewer_files(data: dict, folder: Path) -> Path:
    """``{slug}.json`` and ``graph-metadata.json`` (the graphs the local server lists) into ``folder``."""
    folder = Path(folder)
    path = folder / f"{data['metadata']['slug']}.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    index = folder / "graph-metadata.json"
    graphs = json.loads(index.read_text())["graphs"] if index.exists() else []
    graphs = [g for g in graphs if g["slug"] != data["metadata"]["slug"]] + [data["metadata"]]
    index.write_text(json.dumps({"graphs": graphs}, indent=2), encoding="utf-8")
    return path
