"""The attention graph of one prompt (:func:`attnsae.graph.build.build` makes it): nodes as columns, edges as a sparse
list, and the checks that it is exact.

Nodes (``kind``): ``token`` and ``position`` (the embeddings at each position), ``feature`` (an active SAE feature at
(layer, position); ``index`` is the feature), ``head`` (a head's output at its destination in a layer without an SAE;
``index`` is the head), ``error`` (an SAE's reconstruction error through W_O), ``bias`` (a layer's constant output:
b_dec and b_O through W_O, and a post-norm's β'), ``mlp`` (an MLP's output: a leaf; with ``--mlp linear`` its linear
part ``J y``, a reader of the nodes at its position, beside the leaf ``mlp_rest``), and the ``target``. ``value``:
a feature's pre-activation, a head's effect on the target (``g · o``), the target's value, and for a leaf its effect;
``const``: the part of a reader's value that no node carries (biases of its value path); ``effect``: how much the
target falls when the node is removed from the frozen model.

Edges ``src -> dst`` with ``weight`` (the direct contribution of ``src`` to ``dst``'s value): for every node that
reads the stream (feature, head, target), ``const + Σ incoming weights = value`` to fp32 rounding
(:meth:`Graph.closure_errors`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from attnsae.errors import AttnsaeError

KINDS = ("token", "position", "feature", "head", "error", "bias", "mlp", "mlp_rest", "target")
READERS = ("feature", "head", "target")  # nodes with incoming edges (and "mlp" with --mlp linear)
EMBEDDINGS = ("token", "position")


def reader_kinds(mlp_mode: str) -> tuple[str, ...]:
    """The kinds of node that have incoming edges: an MLP output too when MLPs are linear."""
    return READERS + (("mlp",) if mlp_mode == "linear" else ())


def leaf_kinds(mlp_mode: str) -> tuple[str, ...]:
    return ("token", "position", "bias", "error") + (("mlp_rest",) if mlp_mode == "linear" else ("mlp",))


@dataclass
class Graph:
    """One prompt's graph; node columns [N] and edge columns [E] (see the module docstring)."""

    model: str
    tokens: list[int]
    token_strs: list[str]
    target: dict  # attnsae.graph.target.Target.to_dict()
    n_layers: int
    sae_layers: list[int]
    kind: Tensor  # int64 [N], an index into KINDS
    layer: Tensor  # int64 [N]: -1 for embeddings; the target's layer (n_layers for a logit)
    pos: Tensor  # int64 [N]
    index: Tensor  # int64 [N]: feature, head or token id; -1 otherwise
    value: Tensor  # float64 [N]
    const: Tensor  # float64 [N]
    src: Tensor  # int64 [E]
    dst: Tensor  # int64 [E]
    weight: Tensor  # float32 [E]
    effect: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    coef: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))  # ∂ target / ∂ value
    seconds: dict = field(default_factory=dict)
    closure: float = 0.0  # the largest relative closure error found when built (Graph.check_closure)
    mlp_mode: str = "leaf"

    @classmethod
    def from_parts(cls, model: str, fp, target, cols: dict[str, list[Tensor]], src: Tensor, dst: Tensor,
                   weight: Tensor, sae_layers: list[int]) -> Graph:
        """From the builder's node columns (lists of pieces) and edge columns."""
        tokens = fp.tokens.tolist()
        return cls(model=model, tokens=tokens, token_strs=[], target=target.to_dict(), n_layers=fp.n_layers,
                   sae_layers=sae_layers, **{k: torch.cat(v) for k, v in cols.items()}, src=src.long(),
                   dst=dst.long(), weight=weight.float())

    # ------------------------------------------------------------------------------------------- shape

    @property
    def n_nodes(self) -> int:
        return len(self.kind)

    @property
    def n_edges(self) -> int:
        return len(self.src)

    @property
    def readers(self) -> Tensor:
        """bool [N]: the nodes with incoming edges."""
        return self.is_kind(*reader_kinds(self.mlp_mode))

    @property
    def stage(self) -> Tensor:
        """int64 [N]: a node's place in the forward pass (embeddings, then per layer attention then MLP, then the
        target); every edge climbs it."""
        mlp = self.is_kind("mlp", "mlp_rest")
        st = 2 * self.layer + mlp.long()
        st[self.is_kind(*EMBEDDINGS)] = -2
        st[self.is_kind("target")] = 2 * max(int(self.layer.max()), 0) + 5
        return st

    def is_kind(self, *kinds: str) -> Tensor:
        """bool [N]: the nodes of any of ``kinds``."""
        return torch.isin(self.kind, torch.tensor([KINDS.index(k) for k in kinds]))

    @property
    def target_id(self) -> int:
        return int(self.is_kind("target").nonzero()[0, 0])

    def name(self, i: int) -> str:
        """A node's readable name, e.g. ``L1/123@5``, ``L0.H3@4``, ``L0 error@2``, ``tok@3``, ``target``."""
        k, l, p, j = KINDS[int(self.kind[i])], int(self.layer[i]), int(self.pos[i]), int(self.index[i])
        return {"feature": f"L{l}/{j}@{p}", "head": f"L{l}.H{j}@{p}", "target": "target", "token": f"tok@{p}",
                "position": f"pos@{p}"}.get(k, f"L{l} {k}@{p}")

    # ------------------------------------------------------------------------------------------- checks

    def incoming(self) -> tuple[Tensor, Tensor]:
        """Per node, float64 [N]: the sum of its incoming weights and the sum of their magnitudes."""
        w = self.weight.double()
        total = torch.zeros(self.n_nodes, dtype=torch.float64).index_add_(0, self.dst, w)
        size = torch.zeros(self.n_nodes, dtype=torch.float64).index_add_(0, self.dst, w.abs())
        return total, size

    def closure_errors(self) -> tuple[Tensor, Tensor]:
        """For every reader: ``|const + Σ incoming − value|`` and the scale it is judged against
        (``|const| + Σ |incoming|``), float64 [n_readers] each, in node order."""
        readers = self.readers
        total, size = self.incoming()
        err = (self.const + total - self.value).abs()
        return err[readers], (self.const.abs() + size)[readers]

    def check_closure(self, rel: float) -> float:
        """Raise unless every reader closes within ``rel`` of its scale (+1e-5); return the largest relative error."""
        err, scale = self.closure_errors()
        if not len(err):
            return 0.0
        bad = err > rel * scale + 1e-5
        if bool(bad.any()):
            i = int(self.readers.nonzero()[:, 0][bad.nonzero()[0, 0]])
            raise AttnsaeError(f"the graph does not close at {self.name(i)}: const + incoming edges = "
                               f"{float(self.const[i] + self.incoming()[0][i]):.6g}, value {float(self.value[i]):.6g}"
                               "; this is a bug, please report it")
        return float((err / scale.clamp_min(1e-12)).max())

    def compute_effects(self) -> None:
        """``effect`` of every node (module docstring of :mod:`attnsae.graph.build`), layer by layer from the
        target down; leaves take their effect as their value. Raises if a head's effect is not its value."""
        N = self.n_nodes
        effect = torch.zeros(N, dtype=torch.float64)
        coef = torch.zeros(N, dtype=torch.float64)
        coef[self.target_id] = 1.0
        effect[self.target_id] = self.value[self.target_id]
        w = self.weight.double()
        stage = self.stage
        src_stage = stage[self.src]
        feature = self.is_kind("feature")
        vectors = self.readers & ~self.is_kind("feature", "target")  # heads (and linear MLPs): value = effect
        for st in sorted(set(stage.tolist()) - {int(stage[self.target_id])}, reverse=True):
            e = (src_stage == st).nonzero()[:, 0]
            effect.index_add_(0, self.src[e], w[e] * coef[self.dst[e]])
            group = stage == st
            f = group & feature
            coef[f] = effect[f] / self.value[f]
            coef[group & vectors] = 1.0
        err = (effect - self.value)[vectors].abs()
        if len(err) and float(err.max()) > 1e-3 * float(self.value[vectors].abs().max()) + 1e-5:
            raise AttnsaeError("a head's effect from the graph's edges differs from its gradient value; this is a "
                               "bug, please report it")
        self.effect = effect
        self.coef = coef
        leaves = ~self.readers
        self.value = torch.where(leaves, effect, self.value)

    def decomposition(self) -> dict[str, float]:
        """The target's value split exactly: the effect of every leaf, summed by kind, plus ``constants`` (each
        reader's constant times its coefficient); the parts sum to ``total``, the target's value."""
        out = {k: float(self.effect[self.is_kind(k)].sum()) for k in leaf_kinds(self.mlp_mode)}
        out["constants"] = float((self.const * self.coef).sum())
        out["total"] = float(self.value[self.target_id])
        return out
