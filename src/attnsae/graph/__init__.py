"""Attention circuit graphs: a whole prompt, every layer, from a target back to the tokens (docs/graphs.md).

``attnsae.graph.build(model, saes, tokens, target) -> Graph`` (:func:`attnsae.graph.build.build`); the stages:
:mod:`~attnsae.graph.frozen` (the frozen prompt), :mod:`~attnsae.graph.target`, :mod:`~attnsae.graph.build` (nodes,
edges, effects), :mod:`~attnsae.graph.graph` (the result and its checks), :mod:`~attnsae.graph.prune`,
:mod:`~attnsae.graph.files` and :mod:`~attnsae.graph.export`, :mod:`~attnsae.graph.faithfulness`,
:mod:`~attnsae.graph.qk`.
"""

from attnsae.graph.build import build  # noqa: E402,F401 - the package's entry point (shadows the module's name)
from attnsae.graph.graph import Graph  # noqa: F401

__all__ = ["build", "Graph"]
