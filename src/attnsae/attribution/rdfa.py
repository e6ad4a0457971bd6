"""Recursive DFA (RDFA): a feature's pre-activation traced back through value paths, as a tree that sums exactly.

Attention patterns ``A`` and norm scales ``σ`` (``blocks.{l}.ln1.hook_scale``, and ``blocks.{l}.ln1_post.hook_scale``
of a post-attention norm) are frozen at their values on the prompt; only the value (OV) path is traced. Then
everything below is linear, and every node's children plus its named remainders equal the node (up to fp32 rounding;
:meth:`RDFANode.residual` is the check; the tree's types are in :mod:`attnsae.attribution.rdfa_tree`).

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

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor

from attnsae.attribution.inputs import check_features, token_strings
from attnsae.attribution.rdfa_tree import MAX_TREE_NODES, RDFANode, RDFAResult, tree_size
from attnsae.attribution.weights import LayerWeights, layer_weights
from attnsae.errors import AttnsaeError
from attnsae.models import check_tokens
from attnsae.models.architecture import describe, require
from attnsae.models.hooks import capture
from attnsae.sae.checks import check_sae, cpu_sae
from attnsae.sae.model import SAE


DEFAULT_PATTERN_BYTES = 256 * 2**20  # attention patterns kept in memory (float32 [head, dest, src] per layer)


class Patterns:
    """``hook_pattern`` per layer, float32 [head, dest, src]: those given, then each other layer captured when first
    asked for (a forward pass stopped after it), keeping the most recently used layers that fit in ``max_bytes``
    (at least one)."""

    def __init__(self, model, tokens: Tensor, max_bytes: int, given: dict[int, Tensor]) -> None:
        self.model, self.tokens, self.max_bytes = model, tokens, max_bytes
        self.cache: dict[int, Tensor] = dict(given)
        self.captures = 0  # forward passes run for patterns after construction

    def __getitem__(self, layer: int) -> Tensor:
        if layer not in self.cache:
            name = f"blocks.{layer}.attn.hook_pattern"
            self.cache[layer] = capture(self.model, self.tokens[None], [name], stop_at_layer=layer + 1)[name][0]
            self.captures += 1
            while len(self.cache) > 1 and sum(a.numel() * 4 for a in self.cache.values()) > self.max_bytes:
                del self.cache[next(iter(self.cache))]
        else:
            self.cache[layer] = self.cache.pop(layer)  # most recently used last
        return self.cache[layer]


# ----------------------------------------------------------------------------------------------- tracer


@dataclass
class _SAELayer:
    sae: SAE
    pre: Tensor  # [S, d_sae]
    act: Tensor  # [S, d_sae]
    bias: Tensor  # [d_sae]: b_enc − b_dec·W_enc


class RDFATracer:
    """Captures one prompt once, checks the decomposition, then traces any feature of the top SAE's layer.

    tokens: int64 [pos] or [1, pos]. ``upstream_saes``: SAEs of earlier layers (a list, or ``{layer: SAE}``) whose
    features split those layers' attention outputs; layers without one stay whole (``hook_attn_out``).

    A model RDFA cannot decompose raises its one-line refusal, unless ``dfa_fallback``: then the tracer gives plain
    DFA, a depth-0 tree (the top ``(source, head)`` terms, the rest, the bias), and :attr:`refused` says why.

    Attention patterns (``[head, dest, src]`` per layer, the one capture that grows with the prompt's length squared)
    are captured with the rest when all of them fit in ``pattern_bytes``; otherwise each layer's is captured when
    first needed (a forward pass stopped after that layer) and the most recently used that fit are kept
    (:class:`Patterns`). ``keep_logits`` runs the whole model and keeps its logits (:attr:`logits` [pos, d_vocab]).
    """

    def __init__(self, model, sae: SAE, tokens: Tensor, upstream_saes: Sequence[SAE] | Mapping[int, SAE] = (),
                 centre_components: bool = True, dfa_fallback: bool = False, keep_logits: bool = False,
                 pattern_bytes: int = DEFAULT_PATTERN_BYTES) -> None:
        self.layer = L = check_sae(model, sae)
        self.refused = describe(model).refusal("rdfa", L)
        if self.refused and not dfa_fallback:
            raise AttnsaeError(self.refused)
        require(model, "dfa", L)
        layers = [L] if self.refused else list(range(L + 1))
        tokens = check_tokens(model, tokens)
        if tokens.shape[0] != 1:
            raise AttnsaeError(f"RDFA traces one prompt at a time, got a batch of {tokens.shape[0]}")
        self.tokens = tokens[0]
        self.token_strs = token_strings(model, self.tokens)
        ups = list(upstream_saes.values()) if isinstance(upstream_saes, Mapping) else list(upstream_saes)
        saes = {L: cpu_sae(sae)}
        for u in ([] if self.refused else ups):
            lu = check_sae(model, u)
            if lu >= L:
                raise AttnsaeError(f"an upstream SAE must read a layer before {L}, not layer {lu}")
            saes[lu] = cpu_sae(u)
        self.model_dtype = next(model.parameters()).dtype
        self.W: dict[int, LayerWeights] = {l: layer_weights(model, l) for l in layers}
        self.centre_components = centre_components
        self.n_heads = self.W[L].n_heads
        self.d_head = self.W[L].d_head

        S = len(self.tokens)
        eager = self.n_heads * S * S * 4 * len(layers) <= pattern_bytes
        names = [] if self.refused else ["hook_embed", "hook_pos_embed"]
        for l in layers:
            names += [f"blocks.{l}.hook_resid_pre", f"blocks.{l}.attn.hook_v", f"blocks.{l}.attn.hook_z"]
            names += [f"blocks.{l}.attn.hook_pattern"] if eager else []
            if self.W[l].in_norm is not None and not self.refused:
                names += [f"blocks.{l}.ln1.hook_scale", f"blocks.{l}.ln1.hook_normalized"]
            if self.W[l].out_norm is not None and l < L:
                names.append(f"blocks.{l}.ln1_post.hook_scale")
            if l < L:
                names += [f"blocks.{l}.hook_attn_out", f"blocks.{l}.hook_mlp_out"]
        if keep_logits:
            names.append("ln_final.hook_scale")
        c = {k: v[0] for k, v in capture(model, self.tokens[None], names, stop_at_layer=None if keep_logits else L + 1,
                                         return_logits=keep_logits).items()}
        missing = [n for n in names if n not in c and n not in ("hook_pos_embed", "ln_final.hook_scale")]
        if missing:
            raise AttnsaeError(f"RDFA needs hook {missing[0]}, which this model does not expose")
        self.S = S
        self.logits: Tensor | None = c.get("logits")  # [S, d_vocab] with keep_logits
        self.final_scale: Tensor | None = c["ln_final.hook_scale"].reshape(S) if "ln_final.hook_scale" in c else None
        self.v = {l: c[f"blocks.{l}.attn.hook_v"] for l in layers}  # [S, n_kv, d_head]
        self.A = Patterns(model, self.tokens, pattern_bytes,
                          {l: c[f"blocks.{l}.attn.hook_pattern"] for l in layers} if eager else {})
        self.z = {l: c[f"blocks.{l}.attn.hook_z"].reshape(S, -1) for l in layers}  # [S, d_in]

        self.saes: dict[int, _SAELayer] = {}
        with torch.no_grad():
            for l, s in saes.items():
                x = self.z[l].to(s.dtype)
                pre = s.pre_acts(x)
                W_enc = s.W_enc.detach().float()
                bias = s.b_enc.detach().float() - (s.b_dec.detach().float() @ W_enc if s.cfg.apply_b_dec_to_input
                                                   else 0.0)
                self.saes[l] = _SAELayer(s, pre.float(), s.activation(pre).float(), bias)

        if not self.refused:
            self._components(model, c)

    def _components(self, model, c: dict[str, Tensor]) -> None:
        """The residual stream's components at every layer up to the top one, checked against the model."""
        L, S = self.layer, self.S
        self.resid = {l: c[f"blocks.{l}.hook_resid_pre"] for l in range(L + 1)}  # [S, d_model]
        self.scale = {l: c[f"blocks.{l}.ln1.hook_scale"].reshape(S) if self.W[l].in_norm else torch.ones(S)
                      for l in range(L + 1)}  # [S] (ones without a pre-norm)
        self.post_scale = {l: c[f"blocks.{l}.ln1_post.hook_scale"].reshape(S) if self.W[l].out_norm else None
                           for l in range(L)}  # [S] of a post-attention norm
        # rows of comps[:, k] with the layer that wrote them (-1: embeddings)
        parts: dict[str, Tensor] = {n: c[n] for n in describe(model).embed_hooks}
        origin = [-1] * len(parts)
        rows, self.comp_names = list(parts.values()), list(parts)
        for l in range(L):
            W = self.W[l]
            if l in self.saes:
                sl = self.saes[l]
                x_hat = sl.sae.decode(sl.act.to(sl.sae.dtype)).detach().float()
                b_dec = sl.sae.b_dec.detach().float()
                ps = self.post_scale[l]
                parts = {f"blocks.{l}.attn.sae.b_dec": W.out((b_dec @ W.W_O_cat).expand(S, -1), ps),
                         f"blocks.{l}.attn.sae.error": W.out((self.z[l] - x_hat) @ W.W_O_cat, ps)}
                if W.has_b_O:
                    parts[f"blocks.{l}.attn.b_O"] = W.out(W.b_O.expand(S, -1), ps)
                if W.post_b is not None and bool(W.post_b.any()):
                    parts[f"blocks.{l}.ln1_post.b"] = W.post_b.expand(S, -1)
            else:
                parts = {f"blocks.{l}.hook_attn_out": c[f"blocks.{l}.hook_attn_out"]}
            parts[f"blocks.{l}.hook_mlp_out"] = c[f"blocks.{l}.hook_mlp_out"]
            rows += parts.values()
            self.comp_names += parts
            origin += [l] * len(parts)
        self.comps = torch.stack(rows, dim=1)  # [S, n_comp, d_model]
        self.comp_mean = self.comps.mean(-1)  # [S, n_comp]
        self.origin = torch.tensor(origin)
        self._dirs: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor, Tensor]] = {}
        self._check(c)

    # ------------------------------------------------------------------------------------------- checks

    def _check(self, c: dict[str, Tensor]) -> None:
        rel = 1e-4 if self.model_dtype == torch.float32 else 3e-2  # the model's own rounding

        def close(a: Tensor, b: Tensor, what: str) -> None:
            err = float((a - b).abs().max())
            tol = rel * float(b.abs().max()) + 1e-5
            if not err <= tol:
                raise AttnsaeError(f"RDFA cannot decompose this model: {what} does not match the model (max error "
                                   f"{err:.3g}); its blocks do not fit the pre-norm layout RDFA assumes")

        for l in range(self.layer + 1):
            keep = self.origin < l
            total = self.comps[:, keep].sum(1)
            for j, sl in self.saes.items():
                if j < l:
                    total = total + self.W[j].out((sl.act @ sl.sae.W_dec.detach().float()) @ self.W[j].W_O_cat,
                                                  self.post_scale[j])
            close(total, self.resid[l], f"the sum of components at blocks.{l}.hook_resid_pre")
            W = self.W[l]
            ln_out = self.resid[l]
            if W.in_norm is not None:
                x = ln_out - ln_out.mean(-1, keepdim=True) if W.centres_input else ln_out
                normed = x / self.scale[l][:, None]
                close(normed, c[f"blocks.{l}.ln1.hook_normalized"], f"blocks.{l}.ln1.hook_normalized")
                ln_out = normed * W.ln_w + W.ln_b
            v = torch.einsum("sm,gmd->sgd", ln_out, W.W_V) + W.b_V
            close(v, self.v[l], f"ln1 @ W_V + b_V at blocks.{l}.attn.hook_v")

    # ------------------------------------------------------------------------------------------- tracing

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
        self.top_k = top_k
        if self.refused:
            depth = 0  # plain DFA: the root's (source, head) terms are leaves
        terms = self.dfa_terms(L, feature, position)  # [S, H]
        root = self._feature(L, position, feature, 1.0, depth, root=True, terms=terms)
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
        self.top_k = top_k
        if kind == "feature":
            node = self._feature(l, position, feature, coef, 0, root=True)
        elif kind == "head_source":
            if head is None or not 0 <= head < self.n_heads:
                raise AttnsaeError(f"a head-source node needs a head in 0..{self.n_heads - 1}, got {head}")
            if source is None or not 0 <= source < self.S:
                raise AttnsaeError(f"a head-source node needs a source in 0..{self.S - 1}, got {source}")
            r = self.saes[l].sae.W_enc.detach()[head * self.d_head:(head + 1) * self.d_head, feature].float()
            node = self._head_source(l, head, position, source, r, coef, 1, feature)
        else:
            raise AttnsaeError(f"only feature and head_source nodes expand, not {kind!r}")
        small = [c for c in node.children if abs(c.value) < threshold * abs(node.value)]
        if small:
            node.children = [c for c in node.children if c not in small]
            node.remainders["below_threshold"] = sum(c.value for c in small)
        return node

    def _check_layer(self, layer: int) -> int:
        if layer not in self.saes:
            raise AttnsaeError(f"layer {layer} has no SAE here: the SAEs read layers "
                               f"{', '.join(map(str, sorted(self.saes)))}")
        return layer

    def _check_position(self, position: int) -> None:
        if not 0 <= position < self.S:
            raise AttnsaeError(f"position {position} is out of range: the prompt has positions 0..{self.S - 1}")

    def dfa_terms(self, layer: int, feature: int, position: int) -> Tensor:
        """``A_h[t, s]·(w_{j,h} · v_{kv(h)}[s])``: [S, H], the DFA of ``feature`` j of the SAE at ``layer`` at
        ``position`` t; it sums to ``pre_j[t] − bias_j``."""
        w = self.saes[layer].sae.W_enc.detach()[:, feature].float().view(self.n_heads, self.d_head)  # [H, d_head]
        vw = torch.einsum("shd,hd->sh", self.v[layer][:, self.W[layer].kv_of_head], w)  # [S, H]
        return self.A[layer][:, position, :].T * vw

    def _feature(self, l: int, t: int, j: int, kappa: float, depth: int, root: bool = False,
                 terms: Tensor | None = None) -> RDFANode:
        sl = self.saes[l]
        pre, act = float(sl.pre[t, j]), float(sl.act[t, j])
        node = RDFANode("feature", f"blocks.{l}.attn.sae feature {j}", kappa * pre if root else kappa * act, layer=l,
                        position=t, feature=j, activation=act, coef=kappa)
        if not (root or depth > 0):
            return node
        terms = (self.dfa_terms(l, j, t) if terms is None else terms) * kappa  # [S, H]
        flat = terms.flatten()
        k = min(self.top_k, len(flat))
        top = flat.abs().topk(k).indices
        for i in top.tolist():
            s, h = divmod(i, self.n_heads)
            r = sl.sae.W_enc.detach()[h * self.d_head:(h + 1) * self.d_head, j].float()
            node.children.append(self._head_source(l, h, t, s, r, kappa, depth, j))
        node.remainders["other_sources_heads"] = float(flat.sum() - flat[top].sum())
        node.remainders[f"blocks.{l}.attn.sae.bias"] = kappa * float(sl.bias[j])
        if not root and act != pre:
            node.remainders[f"blocks.{l}.attn.sae.activation_gap"] = kappa * (act - pre)
        return node

    def _head_source(self, l: int, h: int, t: int, s: int, r: Tensor, coef: float, depth: int,
                     feature: int) -> RDFANode:
        W = self.W[l]
        g = int(W.kv_of_head[h])
        alpha = coef * float(self.A[l][h, t, s])
        node = RDFANode("head_source", f"blocks.{l}.attn head {h}", alpha * float(self.v[l][s, g] @ r), layer=l,
                        position=t, source=s, head=h, feature=feature, coef=coef)
        if depth <= 0:
            return node
        u = W.W_V[g] @ r  # [d_model]
        ug = W.ln_w * u
        sum_ug = float(ug.sum())
        a = alpha / float(self.scale[l][s])

        keep = (self.origin < l).nonzero()[:, 0]
        centre = self.centre_components and W.centres_input
        contrib = self.comps[s, keep] @ ug
        if centre:
            contrib = contrib - self.comp_mean[s, keep] * sum_ug
        for k, val in zip(keep.tolist(), (a * contrib).tolist()):
            node.children.append(RDFANode("component", self.comp_names[k], val, layer=int(self.origin[k]),
                                          position=s))

        feats: list[tuple[float, int, int, float]] = []  # (contribution, layer, feature, kappa)
        for lu in sorted(j for j in self.saes if j < l):
            js, acts, D, D_mean = self._directions(lu, s)
            kap = D @ ug
            if centre:
                kap = kap - D_mean * sum_ug
            kap = a * kap
            feats += list(zip((acts * kap).tolist(), [lu] * len(js), js.tolist(), kap.tolist()))
        feats.sort(key=lambda x: -abs(x[0]))
        for val, lu, j, kap in feats[:self.top_k]:
            node.children.append(self._feature(lu, s, j, kap, depth - 1))
        for lu in sorted(j for j in self.saes if j < l):
            node.remainders[f"blocks.{lu}.attn.sae.other_features"] = sum(
                f[0] for f in feats[self.top_k:] if f[1] == lu)

        if W.in_norm is not None and (W.centres_input or bool(W.ln_b.any())):
            node.remainders[f"blocks.{l}.ln1.b"] = alpha * float(W.ln_b @ u)
        if W.centres_input and not centre:
            node.remainders[f"blocks.{l}.ln1.centring"] = -a * float(self.resid[l][s].mean()) * sum_ug
        if W.has_b_V:
            node.remainders[f"blocks.{l}.attn.b_V"] = alpha * float(W.b_V[g] @ r)
        return node

    def _directions(self, l: int, s: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Active features of layer l's SAE at s: (indices [n], activations [n], d_j W_O [n, d_model], means [n])."""
        key = (l, s)
        if key not in self._dirs:
            sl = self.saes[l]
            js = (sl.act[s] != 0).nonzero()[:, 0]
            ps = self.post_scale[l]
            D = self.W[l].out(sl.sae.W_dec.detach()[js].float() @ self.W[l].W_O_cat,
                              1.0 if ps is None else float(ps[s]))
            self._dirs[key] = (js, sl.act[s, js], D, D.mean(-1))
        return self._dirs[key]


def rdfa(model, sae: SAE, tokens: Tensor, feature: int, position: int | None = None, *, depth: int = 2,
         top_k: int = 5, upstream_saes: Sequence[SAE] | Mapping[int, SAE] = (),
         centre_components: bool = True) -> RDFAResult:
    """Recursive DFA of ``feature`` at ``position`` of one prompt (``tokens`` int64 [pos]); see the module docstring."""
    tracer = RDFATracer(model, sae, tokens, upstream_saes, centre_components)
    return tracer.trace(feature, position, depth, top_k)
