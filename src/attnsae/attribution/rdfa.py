"""Recursive DFA (RDFA): a feature's pre-activation traced back through value paths, as a tree that sums exactly.

Attention patterns ``A`` and norm scales ``σ`` (``blocks.{l}.ln1.hook_scale``, and ``blocks.{l}.ln1_post.hook_scale``
of a post-attention norm) are frozen at their values on the prompt; only the value (OV) path is traced. Then
everything below is linear, and every node's children plus its named remainders equal the node (up to fp32 rounding;
:meth:`RDFANode.residual` is the check). The prompt is captured by :mod:`attnsae.attribution.rdfa_prompt`, each
node kind is expanded by :mod:`attnsae.attribution.rdfa_nodes`, and the tree's types are in
:mod:`attnsae.attribution.rdfa_tree`.

**Feature node** (SAE feature ``j`` of layer ``l`` at position ``t``, carried with a coefficient ``κ``; the root
has ``κ = 1``). With ``w_j = W_enc[:, j]`` split by head into ``w_{j,h}``:

    κ·pre_j[t] = Σ_{s,h} κ·A^l_h[t,s]·(w_{j,h} · v^l_{kv(h)}[s])   +   κ·bias_j       (the DFA identity)
                 └──────── head_source children ────────┘               "blocks.{l}.attn.sae.bias"

The top-k ``(s, h)`` terms by magnitude become children, the rest one remainder ``"other_sources_heads"``. The root's
value is ``pre_j[t]``; an upstream feature's value is ``κ·f_j[t]``, which equals ``κ·pre_j[t]`` because it is active
(ReLU, TopK and JumpReLU all pass an active pre-activation through unchanged; any gap would be the remainder
``"blocks.{l}.attn.sae.activation_gap"``).

**Head-source node** (layer ``l``, head ``h``, dest ``t``, source ``s``, read-out vector ``r`` [d_head], so the node
is ``α·(r · v^l_{kv(h)}[s])`` with ``α = κ·A^l_h[t, s]``). With ``u = W_V[kv(h)] r`` [d_model], ``uγ = γ ⊙ u`` and
the residual stream ``x[s] = Σ_c c[s]`` (components below):

    α·(r·v[s]) = α·((x[s] − mean x[s])/σ[s] · uγ  +  β·u  +  b_V·r)
               = Σ_c α·(c[s] − mean c[s])/σ[s] · uγ   +  α·β·u  +  α·b_V·r
                 └──── component children ────┘          "blocks.{l}.ln1.b"  "blocks.{l}.attn.b_V"

Centring is linear, so the mean of a sum is the sum of means and each component is centred by itself
(``centre_components=False`` instead charges all centring to one remainder ``"blocks.{l}.ln1.centring"`` =
``−α·mean(x[s])·Σ uγ / σ[s]``). RMSNorm has no centring and no β (γ may be ``1 + w``); a block without a pre-norm
(OLMo 2) has ``σ = 1``, ``γ = 1``, ``β = 0``. The components of ``x[s]`` (the input of block
``l``) are ``hook_embed``, ``hook_pos_embed`` (absent with rotary embeddings), and per earlier layer ``l' < l``:
``blocks.{l'}.hook_mlp_out`` and either ``blocks.{l'}.hook_attn_out`` whole or, with an SAE for layer ``l'``,

    attn_out = Σ_j f_j (d_j W_O)  +  b_dec W_O  +  (z_cat − x_hat) W_O  +  b_O
               └─ feature nodes ─┘    ".sae.b_dec"   ".sae.error"        ".b_O"

and with a post-attention norm (sandwich norms, Gemma 2/3 and OLMo 2) each of those terms ``y`` becomes
``out(y) = γ' ⊙ (y − mean y) / σ'[s]`` (no centring for RMSNorm), plus the norm's bias ``".ln1_post.b"``: with
``σ'`` frozen the split stays exact.

An upstream feature ``j`` enters the node as ``f_j[s]·κ_j`` with ``κ_j = α·(d_j W_O − mean)/σ[s] · uγ``: a feature
node at ``(l', s)`` with coefficient ``κ_j``, which recurses by the first identity. The top-k features (over all
earlier layers) are children; the rest sum into ``"blocks.{l'}.attn.sae.other_features"`` per layer.

**Depth** counts value-path decompositions on a branch. The root always lists its top-k ``(s, h)`` terms, which
get the depth ``d`` asked for; a head-source node with depth ``d >= 1`` is split into components, and its feature
children get ``d − 1``; a feature with ``d >= 1`` lists its top-k ``(s, h)`` terms with the same ``d``; with ``d = 0``
both are leaves. Each level reads an earlier layer, so no branch goes deeper than the layer count.

A model whose layout (:mod:`attnsae.models.architecture`) cannot be decomposed (a post-LN encoder such as BERT: its
residual stream is normalised after every block) is refused with one line. Before tracing, the decomposition is checked
against the model on the prompt as well: the components sum to ``blocks.{l}.hook_resid_pre``, ``ln1`` matches
``hook_normalized`` and ``ln1 @ W_V + b_V`` matches ``hook_v``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from torch import Tensor

from attnsae.attribution.inputs import check_features
from attnsae.attribution.rdfa_nodes import feature_node, head_source_node
from attnsae.attribution.patterns import Patterns
from attnsae.attribution.rdfa_prompt import DEFAULT_PATTERN_BYTES, RDFAPrompt
from attnsae.attribution.rdfa_tree import MAX_TREE_NODES, RDFANode, RDFAResult, tree_size
from attnsae.errors import AttnsaeError
from attnsae.sae.model import SAE

__all__ = ["DEFAULT_PATTERN_BYTES", "Patterns", "RDFATracer", "rdfa"]


class RDFATracer(RDFAPrompt):
    """Captures one prompt once (:class:`attnsae.attribution.rdfa_prompt.RDFAPrompt`: the same arguments), checks
    the decomposition, then traces any feature of an SAE it holds (:meth:`trace`) or expands one node (:meth:`expand`).

    tokens: int64 [pos] or [1, pos]. A model RDFA cannot decompose raises its one-line refusal, unless
    ``dfa_fallback``: then the tracer gives plain DFA, a depth-0 tree (the top ``(source, head)`` terms, the rest,
    the bias), and :attr:`refused` says why.
    """

    def trace(self, feature: int, position: int | None = None, depth: int = 2, top_k: int = 5,
              layer: int | None = None) -> RDFAResult:
        """The tree of ``feature`` of the SAE at ``layer`` (default: the top SAE) at ``position`` (default: where its
        activation, else its pre-activation, is largest)."""
        L = self._check_layer(self.layer if layer is None else layer)
        top = self.saes[L]
        (feature,) = check_features(top.sae, feature)
        if depth < 0 or top_k < 1:
            raise AttnsaeError(f"depth must be >= 0 and top_k >= 1, got depth={depth}, top_k={top_k}")
        up = [sl for l, sl in self.saes.items() if l < L]
        n = tree_size(min(depth, L + 1), top_k, len(self.tokens) * self.n_heads,
                      sum(int((sl.act > 0).sum(-1).max()) for sl in up), 5 * L + 2)
        if n > MAX_TREE_NODES:
            raise AttnsaeError(f"depth {depth} with top-k {top_k} expands up to {n:,} nodes on this prompt (at most "
                               f"{MAX_TREE_NODES:,} are traced); lower --top-k or --depth")
        if position is None:
            col = top.act[:, feature] if bool((top.act[:, feature] > 0).any()) else top.pre[:, feature]
            position = int(col.argmax())
        self._check_position(position)
        if self.refused:
            depth = 0  # plain DFA: the root's (source, head) terms are leaves
        terms = self.dfa_terms(L, feature, position)  # [S, H]
        root = feature_node(self, L, position, feature, 1.0, depth, top_k, root=True, terms=terms)
        return RDFAResult(layer=L, feature=feature, position=position, tokens=self.tokens.tolist(),
                          token_strs=self.token_strs, depth=depth, top_k=top_k, root=root,
                          by_src=terms.sum(1).tolist(), by_head=terms.sum(0).tolist())

    def expand(self, kind: str, layer: int, position: int, feature: int, coef: float = 1.0, head: int | None = None,
               source: int | None = None, top_k: int = 5, threshold: float = 0.0) -> RDFANode:
        """One level of the tree below one node, its children leaves (for expanding a tree lazily, as the explorer
        does). A feature node ``(layer, position, feature, coef)`` gets its top-k ``(source, head)`` terms; a
        head-source node (the same plus ``head``, ``source``; ``position`` is the destination) gets its components
        and top-k upstream features. The node's value is ``coef·pre`` (an upstream feature is active, so this is
        ``coef·f``), and children whose |value| is under ``threshold``·|value| fold into the remainder
        ``"below_threshold"``: children plus remainders still sum to the node."""
        if self.refused and kind != "feature":
            raise AttnsaeError(self.refused)
        l = self._check_layer(layer)
        (feature,) = check_features(self.saes[l].sae, feature)
        self._check_position(position)
        if top_k < 1 or not 0 <= threshold <= 1:
            raise AttnsaeError(f"top_k must be >= 1 and threshold in [0, 1], got top_k={top_k}, threshold={threshold}")
        if kind == "feature":
            node = feature_node(self, l, position, feature, coef, 0, top_k, root=True)
        elif kind == "head_source":
            if head is None or not 0 <= head < self.n_heads:
                raise AttnsaeError(f"a head-source node needs a head in 0..{self.n_heads - 1}, got {head}")
            if source is None or not 0 <= source < self.S:
                raise AttnsaeError(f"a head-source node needs a source in 0..{self.S - 1}, got {source}")
            if source > position and bool(self.A.row(l, position)[head, source] == 0):
                raise AttnsaeError(f"head {head} of layer {l} does not attend from {position} to the later position "
                                   f"{source} (causal attention): a source is at most its destination")
            r = self.saes[l].sae.W_enc.detach()[head * self.d_head:(head + 1) * self.d_head, feature].float()
            node = head_source_node(self, l, head, position, source, r, coef, 1, feature, top_k)
        else:
            raise AttnsaeError(f"only feature and head_source nodes expand, not {kind!r}")
        small = [c for c in node.children if abs(c.value) < threshold * abs(node.value)]
        if small:
            node.children = [c for c in node.children if c not in small]
            node.remainders["below_threshold"] = sum(c.value for c in small)
        return node


def rdfa(model, sae: SAE, tokens: Tensor, feature: int, position: int | None = None, *, depth: int = 2,
         top_k: int = 5, upstream_saes: Sequence[SAE] | Mapping[int, SAE] = (),
         centre_components: bool = True) -> RDFAResult:
    """Recursive DFA of ``feature`` at ``position`` of one prompt (``tokens`` int64 [pos]); see the module docstring."""
    tracer = RDFATracer(model, sae, tokens, upstream_saes, centre_components)
    return tracer.trace(feature, position, depth, top_k)
