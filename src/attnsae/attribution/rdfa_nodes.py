"""The two kinds of node recursive DFA expands (:mod:`attnsae.attribution.rdfa` states their identities): a feature
node into ``(source, head)`` terms, and a head-source node into residual-stream components and upstream features.
Children plus remainders equal the node, up to fp32 rounding."""

from __future__ import annotations

from torch import Tensor

from attnsae.attribution.rdfa_prompt import RDFAPrompt
from attnsae.attribution.rdfa_tree import RDFANode


def feature_node(p: RDFAPrompt, l: int, t: int, j: int, kappa: float, depth: int, top_k: int, root: bool = False,
                 terms: Tensor | None = None) -> RDFANode:
    """Feature ``j`` of layer ``l`` at position ``t`` carried with coefficient ``kappa``: its top-k ``(source, head)``
    terms as head-source nodes (depth ``depth``), the other terms, the bias and any activation gap as remainders. A
    non-root feature at depth 0 is a leaf. ``terms``: its DFA terms [S, H] when already computed."""
    sl = p.saes[l]
    pre, act = float(sl.pre[t, j]), float(sl.act[t, j])
    node = RDFANode("feature", f"blocks.{l}.attn.sae feature {j}", kappa * pre if root else kappa * act, layer=l,
                    position=t, feature=j, activation=act, coef=kappa)
    if not (root or depth > 0):
        return node
    terms = (p.dfa_terms(l, j, t) if terms is None else terms) * kappa  # [S, H]
    flat = terms.flatten()
    k = min(top_k, len(flat))
    top = flat.abs().topk(k).indices
    for i in top.tolist():
        s, h = divmod(i, p.n_heads)
        r = sl.sae.W_enc.detach()[h * p.d_head:(h + 1) * p.d_head, j].float()
        node.children.append(head_source_node(p, l, h, t, s, r, kappa, depth, j, top_k))
    node.remainders["other_sources_heads"] = float(flat.sum() - flat[top].sum())
    node.remainders[f"blocks.{l}.attn.sae.bias"] = kappa * float(sl.bias[j])
    if not root and act != pre:
        node.remainders[f"blocks.{l}.attn.sae.activation_gap"] = kappa * (act - pre)
    return node


def head_source_node(p: RDFAPrompt, l: int, h: int, t: int, s: int, r: Tensor, coef: float, depth: int, feature: int,
                     top_k: int) -> RDFANode:
    """Head ``h`` of layer ``l`` reading source ``s`` for destination ``t`` through read-out ``r`` [d_head] (of
    ``feature``), carried with ``coef``: with ``depth >= 1`` its residual-stream components, its top-k upstream
    features (depth ``depth - 1``) and the norm and bias remainders; a leaf at depth 0."""
    W = p.W[l]
    g = int(W.kv_of_head[h])
    alpha = coef * float(p.A.row(l, t)[h, s])
    node = RDFANode("head_source", f"blocks.{l}.attn head {h}", alpha * float(p.v[l][s, g] @ r), layer=l,
                    position=t, source=s, head=h, feature=feature, coef=coef)
    if depth <= 0:
        return node
    u = W.W_V[g] @ r  # [d_model]
    ug = W.ln_w * u
    sum_ug = float(ug.sum())
    a = alpha / float(p.scale[l][s])

    keep = (p.origin < l).nonzero()[:, 0]
    centre = p.centre_components and W.centres_input
    contrib = p.comps[s, keep] @ ug
    if centre:
        contrib = contrib - p.comp_mean[s, keep] * sum_ug
    for k, val in zip(keep.tolist(), (a * contrib).tolist()):
        node.children.append(RDFANode("component", p.comp_names[k], val, layer=int(p.origin[k]),
                                      position=s))

    feats: list[tuple[float, int, int, float]] = []  # (contribution, layer, feature, kappa)
    for lu in sorted(j for j in p.saes if j < l):
        js, acts, D, D_mean = p.directions(lu, s)
        kap = D @ ug
        if centre:
            kap = kap - D_mean * sum_ug
        kap = a * kap
        feats += list(zip((acts * kap).tolist(), [lu] * len(js), js.tolist(), kap.tolist()))
    feats.sort(key=lambda x: -abs(x[0]))
    for val, lu, j, kap in feats[:top_k]:
        node.children.append(feature_node(p, lu, s, j, kap, depth - 1, top_k))
    for lu in sorted(j for j in p.saes if j < l):
        node.remainders[f"blocks.{lu}.attn.sae.other_features"] = sum(
            f[0] for f in feats[top_k:] if f[1] == lu)

    if W.in_norm is not None and (W.centres_input or bool(W.ln_b.any())):
        node.remainders[f"blocks.{l}.ln1.b"] = alpha * float(W.ln_b @ u)
    if W.centres_input and not centre:
        node.remainders[f"blocks.{l}.ln1.centring"] = -a * float(p.resid[l][s].mean()) * sum_ug
    if W.has_b_V:
        node.remainders[f"blocks.{l}.attn.b_V"] = alpha * float(W.b_V[g] @ r)
    return node
