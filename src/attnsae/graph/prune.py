"""Pruning and scores as circuit-tracer defines them (``circuit_tracer.graph``: ``prune_graph``,
``compute_graph_scores``), on a sparse edge list, so results compare.

**Influence.** Row-normalise the adjacency's magnitudes (each node's incoming ``|weight|`` sum to 1), start from the
target (weight 1) and sum the influence it passes down every path: ``influence = t·Â + t·Â² + ...`` (the graph is
acyclic, so the sum ends).

**Pruning** (:func:`prune`): keep the nodes that carry ``node_threshold`` of the total influence (the embeddings
and the target always), row-normalise again over the kept nodes, score each edge by its normalised weight times the
influence of the node it feeds (plus the target's own weight), keep the edges that carry ``edge_threshold`` of the
total score, then repeatedly drop nodes left without an outgoing edge (and readers without an incoming one). A
threshold of 1 keeps everything (circuit-tracer's would drop what float rounding puts past the total): with both at
1 the graph is unpruned, and every reader closes from the file alone.

**Scores** (:func:`scores`): *replacement*, the share of the influence that reaches the embeddings rather than an
unexplained leaf (SAE errors and MLP outputs, circuit-tracer's error nodes); *completeness*, each node's share of
normalised input that does not come from such a leaf, weighted by its influence. Both are 1 when every path from
the target ends in a token. Constant outputs (``bias`` nodes: b_dec, b_O) count as neither, as circuit-tracer's
biases are not nodes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from attnsae.errors import AttnsaeError
from attnsae.graph.graph import EMBEDDINGS, Graph, leaf_kinds



def unexplained_kinds(graph: Graph) -> tuple[str, ...]:
    """The leaves no feature explains: SAE errors, and MLP outputs (their remainders with ``--mlp linear``)."""
    return ("error", "mlp_rest" if graph.mlp_mode == "linear" else "mlp")


class PruneResult(NamedTuple):
    node_mask: Tensor  # bool [N]
    edge_mask: Tensor  # bool [E]
    cumulative_scores: Tensor  # float64 [N]: the share of influence held by nodes at least as influential


def normalized(graph: Graph, keep: Tensor | None = None) -> Tensor:
    """``|weight|`` over the sum of its destination's incoming ``|weight|`` (edges outside ``keep`` as 0): [E]."""
    w = graph.weight.double().abs()
    if keep is not None:
        w = w * keep
    total = torch.zeros(graph.n_nodes, dtype=torch.float64).index_add_(0, graph.dst, w)
    return w / total[graph.dst].clamp_min(1e-10)


def influence(graph: Graph, norm: Tensor, seed: Tensor) -> Tensor:
    """``seed·Â + seed·Â² + ...`` for the normalised adjacency ``norm`` [E]: float64 [N]."""
    total = torch.zeros(graph.n_nodes, dtype=torch.float64)
    current = seed
    for _ in range(2 * graph.n_layers + 3):  # every edge climbs a stage (attention, MLP) of some layer
        current = torch.zeros_like(total).index_add_(0, graph.src, norm * current[graph.dst])
        if not bool(current.any()):
            return total
        total += current
    raise AssertionError("the graph has a path longer than its layers allow")


def find_threshold(scores: Tensor, threshold: float) -> Tensor:
    """The score at which the largest scores first hold ``threshold`` of their total."""
    ordered = scores.sort(descending=True).values
    cumulative = ordered.cumsum(0) / ordered.sum().clamp_min(1e-300)
    i = min(int(torch.searchsorted(cumulative, torch.tensor(threshold, dtype=cumulative.dtype))), len(ordered) - 1)
    return ordered[i]


def target_seed(graph: Graph) -> Tensor:
    seed = torch.zeros(graph.n_nodes, dtype=torch.float64)
    seed[graph.target_id] = 1.0
    return seed


def check_thresholds(node_threshold: float, edge_threshold: float) -> None:
    for name, v in (("--node-threshold", node_threshold), ("--edge-threshold", edge_threshold)):
        if not 0 < v <= 1:
            raise AttnsaeError(f"{name} must be in (0, 1] (the share of influence to keep), got {v:g}")


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
    """circuit-tracer's ``prune_graph`` (module docstring) on ``graph``."""
    check_thresholds(node_threshold, edge_threshold)
    seed = target_seed(graph)
    node_influence = influence(graph, normalized(graph), seed)
    node_mask = node_influence >= find_threshold(node_influence, node_threshold)
    if node_threshold == 1:  # unpruned: every node, even those the target never sees
        node_mask[:] = True
    always = graph.is_kind(*EMBEDDINGS, "target")
    node_mask |= always

    kept = node_mask[graph.src] & node_mask[graph.dst]
    norm = normalized(graph, kept)
    scores = norm * (influence(graph, norm, seed) + seed)[graph.dst]
    edge_mask = (scores >= find_threshold(scores, edge_threshold)) & kept
    if edge_threshold == 1:
        edge_mask = kept

    readers = graph.readers & ~graph.is_kind("target")
    while node_threshold < 1 or edge_threshold < 1:
        has_out = torch.zeros(graph.n_nodes, dtype=torch.bool).index_fill_(0, graph.src[edge_mask], True)
        has_in = torch.zeros(graph.n_nodes, dtype=torch.bool).index_fill_(0, graph.dst[edge_mask], True)
        new = node_mask & (always | has_out) & (~readers | has_in)
        if bool((new == node_mask).all()):
            break
        node_mask = new
        edge_mask &= node_mask[graph.src] & node_mask[graph.dst]

    ordered, order = node_influence.sort(descending=True)
    cumulative = torch.zeros_like(node_influence)
    cumulative[order] = ordered.cumsum(0) / ordered.sum().clamp_min(1e-300)
    return PruneResult(node_mask, edge_mask, cumulative)


def scores(graph: Graph) -> dict[str, float]:
    """circuit-tracer's replacement and completeness scores (module docstring), and the share of influence that ends
    in each kind of leaf."""
    seed = target_seed(graph)
    norm = normalized(graph)
    infl = influence(graph, norm, seed)
    unexplained = graph.is_kind(*unexplained_kinds(graph))
    tokens = float(infl[graph.is_kind(*EMBEDDINGS)].sum())
    errors = float(infl[unexplained].sum())
    from_unexplained = torch.zeros(graph.n_nodes, dtype=torch.float64).index_add_(
        0, graph.dst, norm * unexplained[graph.src])
    weight = infl + seed
    leaves = {k: float(infl[graph.is_kind(k)].sum()) for k in leaf_kinds(graph.mlp_mode)}
    total = sum(leaves.values()) or 1.0
    return {"replacement": tokens / (tokens + errors) if tokens + errors > 0 else 1.0,
            "completeness": float(((1 - from_unexplained) * weight).sum() / weight.sum()),
            **{f"influence_share_{k}": v / total for k, v in leaves.items()}}
