"""The explorer's Graph view: the pruned attention graph of a session's prompt (:mod:`attnsae.graph`), built on
request and kept per (target, MLP mode) while the session lives; a graph of more than
:data:`~attnsae.serve.schemas.MAX_GRAPH_EDGES` edges is refused before it is built, and a pruned answer of more than
:data:`~attnsae.serve.schemas.MAX_ANSWER_ITEMS` nodes and edges before it is written (400: prune more).

Answer (``POST /api/graph``): what :func:`attnsae.graph.files.graph_dict` writes for the pruned graph (``nodes`` and
``edges`` as columns, ``target``, ``pruning``), plus ``scores``, ``decomposition`` and ``closure_max_rel_error``.
``POST /api/qk`` explains one edge of such a graph: the head that carries most of it and that head's attention score
split over the nodes at each end (:func:`attnsae.graph.qk.qk_split`).
"""

from __future__ import annotations

from attnsae.errors import AttnsaeError
from attnsae.graph.build import build_from
from attnsae.graph.graph import KINDS
from attnsae.graph.qk import dominant_head, qk_split
from attnsae.graph.files import graph_dict
from attnsae.graph.frozen import FrozenPrompt
from attnsae.graph.prune import prune, scores
from attnsae.graph.target import TargetSpec, resolve
from attnsae.serve import schemas as S
from attnsae.serve.guards import check_items


class GraphCache:
    """Graphs of one prompt (``tokens`` int64 [S]) through ``saes`` ``{layer: SAE}``, by (target, mlp)."""

    def __init__(self, model, saes: dict, tokens, limit: int = 4) -> None:
        self.model, self.saes, self.tokens, self.limit = model, saes, tokens, limit
        self.graphs: dict[tuple, object] = {}
        self.frozen: dict[str, FrozenPrompt] = {}
        self.qk_layers: dict = {}  # attnsae.graph.qk.QKLayer per layer (the leaf and linear runs share the scores)

    def answer(self, target: list[str] | None, mlp: str, node_threshold: float, edge_threshold: float) -> dict:
        g = self.graph(target, mlp)
        pruned = prune(g, node_threshold, edge_threshold)
        check_items(int(pruned.node_mask.sum() + pruned.edge_mask.sum()), "nodes + edges kept by the pruning",
                    "lower node_threshold and edge_threshold to prune more")
        return graph_dict(g, pruned, node_threshold, edge_threshold,
                          {"scores": scores(g), "decomposition": g.decomposition(), "closure_max_rel_error": g.closure})

    def edge(self, target: list[str] | None, mlp: str, source: str, dest: str) -> dict:
        """Why the head of the edge ``source -> dest`` (node names) attended (:func:`attnsae.graph.qk.qk_split`)."""
        g = self.graph(target, mlp)
        names = {g.name(i): i for i in range(g.n_nodes)}
        if source not in names or dest not in names:
            raise AttnsaeError(f"no node {source if source not in names else dest!r} in this graph")
        m, n = names[dest], names[source]
        if g.kind[m] not in (KINDS.index("feature"), KINDS.index("head")) or not bool(
                ((g.src == n) & (g.dst == m)).any()):
            raise AttnsaeError(f"{source} -> {dest} is not an edge into a feature or a head: only those pass through "
                               "an attention score")
        fp = self.frozen[mlp]
        l, t, s = int(g.layer[m]), int(g.pos[m]), int(g.pos[n])
        h = int(g.index[m]) if g.kind[m] == KINDS.index("head") else dominant_head(fp, g, m, n)
        return qk_split(self.model, fp, g, l, h, t, s, top=8, layers=self.qk_layers)

    def graph(self, target: list[str] | None, mlp: str):
        spec = TargetSpec.parse(target)
        key = (spec, mlp)
        if key not in self.graphs:
            if mlp not in self.frozen:
                self.frozen[mlp] = FrozenPrompt(self.model, self.saes, self.tokens, mlp)
            fp = self.frozen[mlp]
            self.graphs[key] = build_from(self.model, fp, resolve(spec, fp, self.model.tokenizer), progress=False,
                                          max_edges=S.MAX_GRAPH_EDGES)
            while len(self.graphs) > self.limit:
                self.graphs.pop(next(iter(self.graphs)))
        return self.graphs[key]
