"""Why a head attended: its attention score split exactly over the graph's nodes (:func:`qk_split`).

The score of head ``h`` from destination ``t`` to source ``s`` (``blocks.{l}.attn.hook_attn_scores``, before the
softmax) is ``c · rot_t(q_t) · rot_s(k_s)`` with ``q = norm(x) W_Q + b_Q``, ``k = norm(x) W_K + b_K``, ``rot`` the
rotary rotation at a position (the identity without rotary embeddings) and ``c`` the score scale. With the norm's
scale frozen, ``k_s`` is affine in the residual stream at ``s``, itself the sum of the graph's nodes there, so with the
query fixed the score splits exactly over the nodes at ``s`` (the *key side*), plus a constant from ``β W_K + b_K``;
likewise, the key fixed, over the nodes at ``t`` (the *query side*). Before splitting, the layer's keys, queries,
rotations and scores are rebuilt from the weights and checked against the model's hooks; a layout that does not fit
(a q/k norm, a score soft-cap) is refused in one line.

With ``--mlp linear`` an MLP's part passes its share back through its Jacobian to the nodes it reads, so a head's
output that reaches the key through an MLP is credited to the head. The *contrast* says why the head picked this
source over the others: each kind of node's key-side contribution here minus its mean at the other sources.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnsae.errors import AttnsaeError
from attnsae.graph.faithfulness import part_of
from attnsae.graph.frozen import FrozenPrompt, centre
from attnsae.graph.graph import Graph
from attnsae.models.architecture import param
from attnsae.models.hooks import capture


def _rotate(x: Tensor, cos: Tensor | None, sin: Tensor | None) -> Tensor:
    """HF's rotary embedding of ``x`` [S, n, d] at each position (``cos``/``sin`` [S, r], r <= d rotated dims)."""
    if cos is None:
        return x
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    half = torch.cat([-rot[..., r // 2:], rot[..., :r // 2]], -1)
    return torch.cat([rot * cos[:, None] + half * sin[:, None], rest], -1)


class QKLayer:
    """Layer ``l``'s query and key path on the frozen prompt, rebuilt and checked against the model's hooks."""

    def __init__(self, model, fp: FrozenPrompt, l: int) -> None:
        self.fp, self.l = fp, l
        attn = model.blocks[l].attn
        W = fp.W[l]
        self.W_Q, self.W_K = param(attn, "W_Q"), param(attn, "W_K")  # [H, d_model, d], [n_kv, d_model, d]
        if self.W_Q is None or self.W_K is None:
            raise AttnsaeError(f"QK split is refused: cannot read W_Q / W_K of blocks.{l}.attn")
        b_Q, b_K = param(attn, "b_Q"), param(attn, "b_K")
        self.b_Q = torch.zeros(self.W_Q.shape[0], self.W_Q.shape[2]) if b_Q is None else b_Q.reshape(
            self.W_Q.shape[0], -1)
        self.b_K = torch.zeros(self.W_K.shape[0], self.W_K.shape[2]) if b_K is None else b_K.reshape(
            self.W_K.shape[0], -1)
        names = [f"blocks.{l}.attn.hook_{n}" for n in ("q", "k", "rot_q", "rot_k", "cos", "sin", "attn_scores")]
        c = {k.rsplit("hook_", 1)[1]: v[0] for k, v in capture(model, fp.tokens[None], names,
                                                              stop_at_layer=l + 1).items()}
        self.cos, self.sin = c.get("cos"), c.get("sin")
        x = fp.resid[l]
        q = torch.einsum("sm,hmd->shd", fp.read(l, x), self.W_Q) + self.b_Q
        k = torch.einsum("sm,gmd->sgd", fp.read(l, x), self.W_K) + self.b_K
        self.rq, self.rk = _rotate(q, self.cos, self.sin), _rotate(k, self.cos, self.sin)[:, W.kv_of_head]
        dots = torch.einsum("thd,shd->hts", self.rq, self.rk)
        scores = c["attn_scores"]
        real = scores > -1e30  # the positions the mask leaves
        self.scale = float((scores[real] * dots[real]).sum() / (dots[real] ** 2).sum().clamp_min(1e-30))
        for name, got, want in (("hook_q", q, c.get("q")), ("hook_k", k, c.get("k")),
                                ("hook_attn_scores", self.scale * dots * real, scores * real)):
            if want is not None and not float((got - want).abs().max()) <= 1e-3 * float(want.abs().max()) + 1e-4:
                raise AttnsaeError(f"QK split is refused: blocks.{l}.attn.{name} does not follow from the weights "
                                   "(a q/k norm or a score soft-cap); the graph's edges are still exact")

    def split(self, h: int, t: int, s: int, side: str, parts: Tensor) -> tuple[Tensor, float, float]:
        """The score of head ``h`` from ``t`` to ``s`` split over ``parts`` [n, d_model] (the nodes at ``s`` for the
        key side, at ``t`` for the query side): (per part [n], the constant, the score)."""
        fp, W = self.fp, self.fp.W[self.l]
        pos = s if side == "key" else t
        lin = centre(parts, W.centres_input) / fp.scale[self.l][pos] * W.ln_w if W.in_norm else parts
        one = lambda v: v[None, None]  # noqa: E731 - [d] -> [1, 1, d] for _rotate
        cos = None if self.cos is None else self.cos[pos:pos + 1]
        sin = None if self.sin is None else self.sin[pos:pos + 1]
        if side == "key":
            g = int(W.kv_of_head[h])
            keys = _rotate((lin @ self.W_K[g])[None], cos, sin)[0]  # [n, d]
            base = _rotate(one(W.ln_b @ self.W_K[g] + self.b_K[g]), cos, sin)[0, 0]
            fixed = self.rq[t, h]
            return self.scale * keys @ fixed, self.scale * float(base @ fixed), self.score(h, t, s)
        queries = _rotate((lin @ self.W_Q[h])[None], cos, sin)[0]
        base = _rotate(one(W.ln_b @ self.W_Q[h] + self.b_Q[h]), cos, sin)[0, 0]
        fixed = self.rk[s, h]
        return self.scale * queries @ fixed, self.scale * float(base @ fixed), self.score(h, t, s)

    def score(self, h: int, t: int, s: int) -> float:
        return self.scale * float(self.rq[t, h] @ self.rk[s, h])


def qk_split(model, fp: FrozenPrompt, graph: Graph, layer: int, head: int, dest: int, src: int,
             top: int = 10, layers: dict[int, QKLayer] | None = None, contrast: bool = True) -> dict:
    """Both splits of one score (module docstring): the ``top`` nodes by |contribution| on each side, the constant,
    the rest, the score and the attention weight; with ``contrast``, what set ``src`` apart from the head's other
    sources (:func:`_contrast`). ``layers`` caches :class:`QKLayer` per layer."""
    if not (0 <= src <= dest < fp.S) or not 0 <= head < fp.W[layer].n_heads:
        raise AttnsaeError(f"no score from {dest} to {src} of head {head} (positions 0..{fp.S - 1}, source <= dest)")
    qk = (layers or {}).get(layer) or QKLayer(model, fp, layer)
    if layers is not None:
        layers[layer] = qk
    out = {"layer": layer, "head": head, "dest": dest, "src": src, "score": qk.score(head, dest, src),
           "pattern": float(fp.A[layer][head, dest, src])}
    for side, pos in (("key", src), ("query", dest)):
        ids, each, const, score = _side(qk, fp, graph, head, dest, src, side)
        order = each.abs().argsort(descending=True).tolist()
        out[side] = {"nodes": [{"node": graph.name(ids[k]), "value": float(each[k])} for k in order[:top]],
                     "rest": float(each[order[top:]].sum()) if len(order) > top else 0.0, "constant": const,
                     "closes": abs(float(each.sum()) + const - score) <= 1e-4 * (abs(score) + float(each.abs().sum()))}
    if contrast:
        out["key_contrast"] = _contrast(qk, fp, graph, head, dest, src, top)
    return out


def _kind_of(name: str) -> str:
    """A node's name without its position (``L0.H6@12`` -> ``L0.H6``): what it is, wherever it sits."""
    return name.rsplit("@", 1)[0]


def _side(qk: QKLayer, fp: FrozenPrompt, graph: Graph, head: int, dest: int, src: int, side: str
          ) -> tuple[list[int], Tensor, float, float]:
    """One side's split: the nodes at its position, their contributions [n], the constant and the score."""
    pos = src if side == "key" else dest
    layer = qk.l
    ids = ((graph.pos == pos) & (graph.layer < layer) & ~graph.is_kind("target")).nonzero()[:, 0].tolist()
    d = fp.W[layer].W_V.shape[1]
    u, const, score = qk.split(head, dest, src, side, torch.eye(d))  # the score's read vector at pos
    reads = _through_mlps(fp, graph, ids, u, pos, layer)  # [n, d_model]: per node, what reads its part
    each = torch.stack([part_of(fp, graph, i)[1] @ r for i, r in zip(ids, reads)])
    keep = [k for k, i in enumerate(ids) if not (fp.mlp_mode == "linear" and bool(graph.is_kind("mlp")[i]))]
    return [ids[k] for k in keep], each[keep], const, score


def _contrast(qk: QKLayer, fp: FrozenPrompt, graph: Graph, head: int, dest: int, src: int, top: int) -> dict:
    """Why ``src`` beat the other sources: per kind of node (its name less the position), its key-side
    contribution at ``src`` minus its mean over the head's other sources (positions 0..dest but ``src``); the
    differences sum to ``score(src) − mean score(other)``, which is given too."""
    per: dict[int, dict[str, float]] = {}
    scores: dict[int, float] = {}
    causal = bool(fp.A[qk.l].triu(1).abs().max() == 0)
    for s in range(dest + 1 if causal else fp.S):
        ids, each, const, score = _side(qk, fp, graph, head, dest, s, "key")
        per[s] = {"constant": const}
        for i, v in zip(ids, each.tolist()):
            per[s][_kind_of(graph.name(i))] = per[s].get(_kind_of(graph.name(i)), 0.0) + v
        scores[s] = score
    others = [s for s in per if s != src]
    if not others:
        return {"nodes": [], "score_gap": 0.0}
    kinds = set().union(*per.values())
    diff = {k: per[src].get(k, 0.0) - sum(per[s].get(k, 0.0) for s in others) / len(others) for k in kinds}
    ranked = sorted(diff.items(), key=lambda kv: -abs(kv[1]))
    return {"nodes": [{"node": k, "value": v} for k, v in ranked[:top]],
            "score_gap": scores[src] - sum(scores[s] for s in others) / len(others)}


def _through_mlps(fp: FrozenPrompt, graph: Graph, ids: list[int], u: Tensor, pos: int, layer: int) -> Tensor:
    """The vector that reads each node's part [n, d_model]: ``u`` itself with leaf MLPs; with ``--mlp linear`` also
    every MLP below ``layer`` that the node feeds passes ``u`` back through its Jacobian (``Jᵀ w``, ``w`` what reads
    that MLP's output), so an MLP's share goes to its inputs and its own part is left out (it would count twice)."""
    if fp.mlp_mode != "linear":
        return u.expand(len(ids), -1)
    back: dict[int, Tensor] = {}
    for m in reversed(range(layer)):
        back[m] = fp.mlp_vjp(m, u + sum(back.values(), torch.zeros_like(u)), pos)
    stage = graph.stage
    out = []
    for i in ids:  # MLP m reads the nodes before its stage (before its layer's attention, for a parallel block)
        r = u.clone()
        for m, v in back.items():
            if int(stage[i]) < 2 * m + (1 if fp.mlp_reads_mid[m] else 0):
                r = r + v
        out.append(r)
    return torch.stack(out)


def top_edge_heads(fp: FrozenPrompt, graph: Graph, edges: Tensor, n: int) -> list[tuple[int, int, int, int]]:
    """For the ``n`` edges among ``edges`` (indices) that end in a feature or head and carry most of the target
    (|weight| times the target's sensitivity to the node it feeds, ``Graph.coef``), the head that carries most of each
    and the score it explains: (layer, head, dest, src), without repeats."""
    out: list[tuple[int, int, int, int]] = []
    into = edges[graph.is_kind("feature", "head")[graph.dst[edges]]]
    is_head = graph.is_kind("head")
    carried = (graph.weight[into].double() * graph.coef[graph.dst[into]]).abs()
    for e in into[carried.argsort(descending=True)].tolist():
        m, src = int(graph.dst[e]), int(graph.src[e])
        l, t, s = int(graph.layer[m]), int(graph.pos[m]), int(graph.pos[src])
        h = int(graph.index[m]) if bool(is_head[m]) else dominant_head(fp, graph, m, src)
        key = (l, h, t, s)
        if t > 0 and key not in out:  # at position 0 a causal head has one source: nothing to explain
            out.append(key)
        if len(out) == n:
            break
    return out


def dominant_head(fp: FrozenPrompt, graph: Graph, m: int, src: int) -> int:
    """The head whose term is largest in the edge from ``src`` into feature ``m``: ``A_h[t,s] (V_n W) · W_enc``."""
    l, t, j = int(graph.layer[m]), int(graph.pos[m]), int(graph.index[m])
    W = fp.W[l]
    c = part_of(fp, graph, src)[1]
    s = int(graph.pos[src])
    x = centre(c, W.centres_input) / fp.scale[l][s] * W.ln_w if W.in_norm else c
    v = torch.einsum("m,gmd->gd", x, W.W_V)[W.kv_of_head]  # [H, d_head]
    w = fp.saes[l].W_enc[:, j].reshape(W.n_heads, W.d_head)
    return int((fp.A[l][:, t, s] * (v * w).sum(-1)).abs().argmax())
