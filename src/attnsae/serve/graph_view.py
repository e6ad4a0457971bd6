"""The explorer's Graph view: the pruned attention graph of a session's prompt (:mod:`attnsae.graph`), built on
request and kept per (target, MLP mode) while the session lives.

Answer (``POST /api/graph``): what :func:`attnsae.graph.files.graph_dict` writes for the pruned graph (``nodes`` and
``edges`` as columns, ``target``, ``pruning``), plus ``scores``, ``decomposition`` and ``closure_max_rel_error``.
"""

from __future__ import annotations

from attnsae.graph.build import build_from
from attnsae.graph.files import graph_dict
from attnsae.graph.frozen import FrozenPrompt
from attnsae.graph.prune import prune, scores
from attnsae.graph.target import TargetSpec, resolve


class GraphCache:
    """Graphs of one prompt (``tokens`` int64 [S]) through ``saes`` ``{layer: SAE}``, by (target, mlp)."""

    def __init__(self, model, saes: dict, tokens, limit: int = 4) -> None:
        self.model, self.saes, self.tokens, self.limit = model, saes, tokens, limit
        self.graphs: dict[tuple, object] = {}
        self.frozen: dict[str, FrozenPrompt] = {}

    def answer(self, target: list[str] | None, mlp: str, node_threshold: float, edge_threshold: float) -> dict:
        spec = TargetSpec.parse(target)
        key = (spec, mlp)
        if key not in self.graphs:
            if mlp not in self.frozen:
                self.frozen[mlp] = FrozenPrompt(self.model, self.saes, self.tokens, mlp)
            fp = self.frozen[mlp]
            self.graphs[key] = build_from(self.model, fp, resolve(spec, fp, self.model.tokenizer), progress=False)
            while len(self.graphs) > self.limit:
                self.graphs.pop(next(iter(self.graphs)))
        g = self.graphs[key]
        return graph_dict(g, prune(g, node_threshold, edge_threshold), node_threshold, edge_threshold,
                          {"scores": scores(g), "decomposition": g.decomposition(), "closure_max_rel_error": g.closure})
