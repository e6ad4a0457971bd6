"""The RDFA tree as data: :class:`RDFANode` (a term whose children and named remainders sum to it) and
:class:`RDFAResult` (one feature's tree on one prompt, with its closure check), and the size bound a trace is held to
(:func:`tree_size`, :data:`MAX_TREE_NODES`). :mod:`attnsae.attribution.rdfa` builds them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

CLOSURE_TOLERANCE = 1e-4  # the worst |residual| / scale a tree may have (fp32 rounding gives ~1e-6)
MAX_TREE_NODES = 200_000  # seconds to trace on 2 CPU cores (about 20 µs a node on the reference model)


def tree_size(depth: int, top_k: int, n_terms: int, n_features: int, n_components: int) -> int:
    """At least as many nodes as :meth:`RDFATracer.trace` builds for ``depth`` (at most the layer's index + 1): the root
    and every feature node with depth left list up to ``min(top_k, n_terms)`` (source, head) terms; a head-source
    node with depth ``d >= 1`` splits into up to ``n_components`` components and ``min(top_k, n_features)`` upstream
    features of depth ``d - 1`` (``n_features``: the most features active at one position, over the upstream SAEs);
    nodes with depth 0 below the root are leaves."""
    terms, features = min(top_k, n_terms), min(top_k, n_features)
    under_feature, under_source = 0, 0  # nodes under a non-root feature / a head-source node of the depth reached
    for _ in range(depth):
        under_source = n_components + features * (1 + under_feature)
        under_feature = terms * (1 + under_source)
    return 1 + terms * (1 + under_source)


@dataclass
class RDFANode:
    """One term of the tree: ``value == sum(child.value) + sum(remainders.values())`` when it has either."""

    kind: str  # "feature" | "head_source" | "component"
    name: str  # hook-style label: "blocks.1.attn.sae feature 12", "blocks.1.attn head 3", "blocks.0.hook_mlp_out"
    value: float
    layer: int | None = None
    position: int | None = None  # feature / component: its position; head_source: the destination
    source: int | None = None  # head_source: the source position
    head: int | None = None
    feature: int | None = None  # feature: its index; head_source: the feature whose read-out it is
    activation: float | None = None  # feature: f_j at its position
    coef: float | None = None  # feature and head_source: the κ the feature is carried with (1 at the root)
    children: list[RDFANode] = field(default_factory=list)
    remainders: dict[str, float] = field(default_factory=dict)

    def residual(self) -> float:
        """``value − Σ children − Σ remainders`` (0 for a leaf)."""
        if not self.children and not self.remainders:
            return 0.0
        return self.value - sum(c.value for c in self.children) - sum(self.remainders.values())

    def scale(self) -> float:
        """``|value| + Σ|terms|``: the magnitude fp32 rounding is relative to."""
        return abs(self.value) + sum(abs(c.value) for c in self.children) + sum(
            abs(v) for v in self.remainders.values())

    def walk(self) -> Iterator[RDFANode]:
        yield self
        for c in self.children:
            yield from c.walk()

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("kind", "name", "value", "layer", "position", "source", "head", "feature",
                                           "activation", "coef") if getattr(self, k) is not None}
        d["remainders"] = dict(self.remainders)
        d["children"] = [c.to_dict() for c in self.children]
        return d


@dataclass
class RDFAResult:
    """The tree for one feature at one position of one prompt, with the root's DFA vectors."""

    layer: int
    feature: int
    position: int
    tokens: list[int]
    token_strs: list[str]
    depth: int
    top_k: int
    root: RDFANode
    by_src: list[float]  # the root's DFA by source position [S]
    by_head: list[float]  # [n_heads]

    def max_relative_residual(self) -> float:
        """The worst ``|residual| / scale`` over all nodes (fp32: ~1e-6)."""
        return max((abs(n.residual()) / max(n.scale(), 1e-30) for n in self.root.walk()), default=0.0)

    def closes(self, tolerance: float = CLOSURE_TOLERANCE) -> bool:
        """Whether every node equals its children plus remainders within ``tolerance`` (relative to its terms)."""
        return self.max_relative_residual() <= tolerance

    def to_dict(self) -> dict:
        err = self.max_relative_residual()
        return {"layer": self.layer, "feature": self.feature, "position": self.position, "tokens": self.tokens,
                "token_strs": self.token_strs, "depth": self.depth, "top_k": self.top_k,
                "closure": {"max_relative_residual": err, "tolerance": CLOSURE_TOLERANCE,
                            "closes": err <= CLOSURE_TOLERANCE},
                "by_src": self.by_src, "by_head": self.by_head, "root": self.root.to_dict()}
