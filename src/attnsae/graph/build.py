"""Build the exact attention graph of one prompt (:func:`build`): nodes, edges, and each node's effect on the target.

In the frozen model (:mod:`attnsae.graph.frozen`) every part of the residual stream is a vector ``c_n`` at one
position ``s_n``. A node that reads the stream (an SAE feature at layer ``l``, a head of a layer without an SAE, the
target) reads it through layer ``l``'s value path with read-out ``R_m[h]`` [d_head] per head, so each part enters it
exactly once, through an edge of weight::

    E[m, n] = Σ_h A^l_h[t_m, s_n] · (γ ⊙ centre(c_n) / σ^l[s_n]) W_V^{kv(h)} · R_m[h]

and ``value_m = const_m + Σ_n E[m, n]``, where ``const_m = Σ_h (β W_V^{kv(h)} + b_V^{kv(h)}) · R_m[h]`` plus, for a
feature, its bias ``b_enc − b_dec·W_enc``. Read-outs: a feature ``j`` reads ``R[h] = W_enc[h, :, j]``; a logit target
reads its position through the final norm, ``E = (γ_f ⊙ centre(c_n)/σ_f) · (W_U[:, a] − W_U[:, b])``.

**Head nodes** (layers without an SAE): the output ``o`` of head ``h`` at destination ``t`` is a vector; the graph
gives it the scalar ``value = g · o``, its whole effect on the target, with ``g = ∂ target / ∂ resid_mid^l[t]`` in the
frozen model; so it reads ``R[h] = W_O^h · out^T(g)`` and its incoming edges split that effect exactly.

**Effects.** ``effect_n`` is how much the target falls when node ``n`` is removed from the frozen model (its part
zeroed, everything downstream recomputed). From the edges: ``effect_n = Σ_m E[m, n] · c_m`` with ``c = 1`` for the
target and every head node and ``c_m = effect_m / value_m`` for a feature (its activation passes its pre-activation
through). For a head node ``effect = value`` by construction: the builder checks it, as it checks that every node
closes (``const + Σ incoming = value``).

Node order: the embeddings, then layer by layer the nodes that read (features or heads) and that layer's leaves (SAE
error, constant output, MLP output), then the target. Only positions that can reach the target are kept.
"""

from __future__ import annotations

import time
from typing import Mapping, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from attnsae.attribution.inputs import tokenize
from attnsae.errors import AttnsaeError
from attnsae.evals.splice import saes_by_layer
from attnsae.graph.frozen import FrozenPrompt, centre
from attnsae.graph.graph import KINDS, Graph
from attnsae.graph.target import Target, TargetSpec, resolve
from attnsae.models import model_name
from attnsae.models.architecture import describe
from attnsae.sae.model import SAE

CLOSE_REL = 1e-4  # closure tolerance, relative to the sum of a node's |incoming edges| and |constant| (fp32)


class _Nodes:
    """Nodes as they are made: their columns, and each part's vector [d_model] and position for later readers."""

    def __init__(self) -> None:
        self.cols: dict[str, list[Tensor]] = {k: [] for k in ("kind", "layer", "pos", "index", "value", "const")}
        self.parts: list[Tensor] = []  # [n, d_model] per group, aligned with the nodes (targets: none)
        self.n = 0

    def add(self, kind: str, layer: int, pos: Tensor, index: Tensor | int, value: Tensor, part: Tensor | None,
            const: Tensor | None = None) -> range:
        n = len(pos)
        for k, v in (("kind", KINDS.index(kind)), ("layer", layer), ("index", index)):
            self.cols[k].append(torch.as_tensor(v).expand(n).long() if not isinstance(v, Tensor) or v.ndim == 0
                                else v.long())
        self.cols["pos"].append(pos.long())
        self.cols["value"].append(value.double())
        self.cols["const"].append(torch.zeros(n, dtype=torch.float64) if const is None else const.double())
        if part is not None:
            self.parts.append(part)
        out = range(self.n, self.n + n)
        self.n += n
        return out


def build(model, saes: Sequence[SAE] | Mapping[int, SAE] = (), tokens: Tensor | None = None,
          target: TargetSpec | Sequence[str] | str | None = None, prompt: str | None = None, mlp: str = "leaf",
          progress: bool = True) -> Graph:
    """The exact graph of ``target`` on one prompt (``tokens`` int64 [S] or [1, S], or ``prompt`` text tokenised
    with the model's BOS), with ``saes`` splitting their layers' attention outputs into features; other layers are
    split into heads. See the module docstring; :class:`attnsae.graph.graph.Graph` holds the result."""
    t0 = time.perf_counter()
    if tokens is None:
        if prompt is None:
            raise AttnsaeError("give the prompt as tokens or as text")
        tokens = tokenize(model, prompt)[0]
    fp = FrozenPrompt(model, saes_by_layer(model, saes), tokens, mlp)
    spec = target if isinstance(target, TargetSpec) else TargetSpec.parse(target)
    graph = build_from(model, fp, resolve(spec, fp, model.tokenizer), progress)
    graph.seconds = {"build": time.perf_counter() - t0}
    return graph


def build_from(model, fp: FrozenPrompt, tgt: Target, progress: bool = True, max_edges: int | None = None) -> Graph:
    """The graph of the resolved target ``tgt`` on the frozen prompt ``fp``; with ``max_edges``, refused before any
    work when it would have more edges (:func:`count_edges`)."""
    t0 = time.perf_counter()
    if max_edges is not None and (n := count_edges(model, fp, tgt)) > max_edges:
        raise AttnsaeError(f"this graph would have {n:,} edges, over the {max_edges:,} allowed here: shorten the "
                           "prompt, or pick a target earlier in it")
    top = tgt.layer if tgt.kind == "feature" else fp.n_layers
    P = tgt.pos + 1 if describe(model).causal else fp.S  # the positions that can reach the target
    need_g = top > 0 and (fp.mlp_mode == "linear" or any(l not in fp.saes for l in range(top)))  # no layer: no g
    g = fp.grad(lambda probes: tgt.frozen_value(fp, probes))[:, :P] if need_g else None  # [2 n_layers, P, d]

    nodes, src_rows, dst_rows, weights = _Nodes(), [], [], []
    positions = torch.arange(P)
    for name, e in fp.embeds.items():
        kind = "token" if name == "hook_embed" else "position"
        nodes.add(kind, -1, positions, -1, torch.zeros(P), e[:P])
    with torch.no_grad():
        for l in tqdm(range(top), desc="graph layers", unit="layer", disable=not progress):
            before_attention = nodes.n
            src = torch.cat(nodes.parts)
            src_pos = torch.cat(nodes.cols["pos"])
            if l in fp.saes:
                f = fp.saes[l]
                pairs = f.active[:P].nonzero()  # [n, 2] (position, feature), by position
                R = f.W_enc[:, pairs[:, 1]].T.reshape(len(pairs), fp.W[l].n_heads, fp.W[l].d_head)
                parts = f.act[pairs[:, 0], pairs[:, 1], None] * fp.feature_outputs(l, pairs)
                extra = f.bias[pairs[:, 1]]
                reader = ("feature", pairs[:, 0], pairs[:, 1], f.pre[pairs[:, 0], pairs[:, 1]], parts)
            else:
                H = fp.W[l].n_heads
                pairs = torch.cartesian_prod(positions, torch.arange(H))  # [P * H, 2] (position, head)
                o = fp.head_outputs(l)[:P].reshape(P * H, -1)
                R = _head_readouts(fp, l, g[2 * l], pairs)
                extra = torch.zeros(len(pairs))
                value = (o * g[2 * l][pairs[:, 0]]).sum(-1)
                reader = ("head", pairs[:, 0], pairs[:, 1], value, o)
            const = _const(fp, l, pairs[:, 0], R) + extra
            ids = nodes.add(reader[0], l, reader[1], reader[2], reader[3], reader[4], const)
            _read_edges(fp, l, src, src_pos, pairs[:, 0], R, torch.tensor(ids), src_rows, dst_rows, weights)
            if l in fp.saes:
                err = fp.out(l, fp.error(l) @ fp.W[l].W_O_cat)[:P]
                nodes.add("error", l, positions, -1, torch.zeros(P), err)
            nodes.add("bias", l, positions, -1, torch.zeros(P), fp.bias_part(l)[:P])
            if fp.mlp_mode == "linear":
                _mlp_node(fp, l, g[2 * l + 1], nodes, nodes.n if fp.mlp_reads_mid[l] else before_attention,
                          src_rows, dst_rows, weights)
            else:
                nodes.add("mlp", l, positions, -1, torch.zeros(P), fp.mlp[l][:P])
        _target_edges(fp, tgt, nodes, src_rows, dst_rows, weights)

    graph = Graph.from_parts(model_name(model) or "model", fp, tgt, nodes.cols, torch.cat(src_rows),
                             torch.cat(dst_rows), torch.cat(weights), sorted(fp.saes))
    graph.token_strs = [model.tokenizer.decode([t]) for t in graph.tokens]
    graph.mlp_mode = fp.mlp_mode
    graph.closure = graph.check_closure(CLOSE_REL if fp.W[0].W_V.dtype == torch.float32 else 3e-2)
    graph.compute_effects()
    graph.seconds = {"build": time.perf_counter() - t0}
    return graph


def count_edges(model, fp: FrozenPrompt, tgt: Target) -> int:
    """How many edges :func:`build_from` makes for ``tgt`` on ``fp``, counted from the node counts alone (no edge
    made): a reader at position t of layer l has one edge from every part made before layer l at a position it
    attends to (s <= t when the layer is causal), a linear MLP node one from each part at its position that it reads,
    and the target one from every part it reads."""
    top = tgt.layer if tgt.kind == "feature" else fp.n_layers
    P = tgt.pos + 1 if describe(model).causal else fp.S
    parts = torch.full((P,), len(fp.embeds), dtype=torch.long)  # [P] parts made so far at each position
    edges = 0

    def read(l: int, readers: Tensor) -> int:  # readers [P]: how many read at each position through layer l
        causal = bool(fp.A[l].triu(1).abs().max() == 0)
        return int((readers * (parts.cumsum(0) if causal else parts.sum())).sum())

    for l in range(top):
        readers = fp.saes[l].active[:P].sum(1).long() if l in fp.saes else torch.full((P,), fp.W[l].n_heads)
        edges += read(l, readers)
        before_attention = parts.clone()
        parts += readers + (l in fp.saes) + 1  # the readers, the SAE error, the constant output
        if fp.mlp_mode == "linear":
            edges += int((parts if fp.mlp_reads_mid[l] else before_attention).sum())
            parts += 2  # the MLP's linear part and its remainder
        else:
            parts += 1
    if tgt.kind == "feature":
        return edges + read(tgt.layer, torch.zeros(P, dtype=torch.long).index_fill_(0, torch.tensor([tgt.pos]), 1))
    return edges + int(parts[tgt.pos])


def _mlp_node(fp: FrozenPrompt, l: int, g: Tensor, nodes: _Nodes, n_feed: int, src_rows: list, dst_rows: list,
              weights: list) -> None:
    """MLP ``l``'s linear part ``J y`` at each position as a node (value ``g · J y0``, its effect; ``g`` [P, d_model]
    the gradient after the MLP), read from the first ``n_feed`` parts at its position through ``Jᵀ g``, and the
    remainder ``r`` as a leaf."""
    P = len(g)
    feed = torch.cat(nodes.parts)[:n_feed]
    feed_pos = torch.cat(nodes.cols["pos"])[:n_feed]
    read = fp.mlp_vjp(l, torch.cat([g, g.new_zeros(fp.S - P, g.shape[1])]))[:P]  # [P, d_model]
    lin = fp.mlp_lin[l][:P]
    positions = torch.arange(P)
    ids = torch.tensor(nodes.add("mlp", l, positions, -1, (lin * g).sum(-1), lin, torch.zeros(P)))
    src_rows.append(torch.arange(n_feed))
    dst_rows.append(ids[feed_pos])
    weights.append((feed * read[feed_pos]).sum(-1))
    nodes.add("mlp_rest", l, positions, -1, torch.zeros(P), fp.mlp_rest[l][:P])


def _head_readouts(fp: FrozenPrompt, l: int, g: Tensor, pairs: Tensor) -> Tensor:
    """``R[m, h] = δ(h, h_m) W_O^h · out^T(g[t_m])`` for head nodes ``pairs`` (position, head): [n, H, d_head]."""
    W = fp.W[l]
    gt = g[pairs[:, 0]]  # [n, d_model]
    if W.out_norm is not None:  # the adjoint of out(y) = γ' ⊙ centre(y) / σ'
        gt = centre(gt * W.post_w / fp.post_scale[l][pairs[:, 0], None], W.out_norm.kind == "LN")
    R = torch.zeros(len(pairs), W.n_heads, W.d_head)
    R[torch.arange(len(pairs)), pairs[:, 1]] = torch.einsum("ndm,nm->nd", W.W_O[pairs[:, 1]], gt)
    return R


def _const(fp: FrozenPrompt, l: int, dest: Tensor, R: Tensor) -> Tensor:
    """The part of each reader's value that no node carries: ``Σ_h (Σ_s A_h[t, s]) (β W_V + b_V)^{kv(h)} · R[h]``."""
    W = fp.W[l]
    base = (torch.einsum("m,gmd->gd", W.ln_b, W.W_V) + W.b_V)[W.kv_of_head]  # [H, d_head]
    mass = fp.A[l][:, dest, :].sum(-1).T  # [n, H]
    return torch.einsum("nh,hd,nhd->n", mass, base, R)


def _read_edges(fp: FrozenPrompt, l: int, src: Tensor, src_pos: Tensor, dest: Tensor, R: Tensor, ids: Tensor,
                src_rows: list, dst_rows: list, weights: list) -> None:
    """Edges from every part made so far (``src`` [n_src, d_model] at ``src_pos``) into the readers ``ids`` of layer
    ``l`` at positions ``dest`` with read-outs ``R`` [n, H, d_head]."""
    W = fp.W[l]
    x = centre(src, W.centres_input) / fp.scale[l][src_pos, None] * W.ln_w if W.in_norm else src
    V = torch.einsum("nm,gmd->ngd", x, W.W_V)[:, W.kv_of_head]  # [n_src, H, d_head]
    causal = bool(fp.A[l].triu(1).abs().max() == 0)
    for t in torch.unique(dest).tolist():
        rows = (dest == t).nonzero()[:, 0]
        cols = (src_pos <= t).nonzero()[:, 0] if causal else torch.arange(len(src))
        a = fp.A[l][:, t, src_pos[cols]].T  # [n, H]
        E = (V[cols] * a[..., None]).flatten(1) @ R[rows].flatten(1).T  # [n_cols, n_rows]
        src_rows.append(cols.repeat_interleave(len(rows)))
        dst_rows.append(ids[rows].repeat(len(cols)))
        weights.append(E.reshape(-1))


def _target_edges(fp: FrozenPrompt, tgt: Target, nodes: _Nodes, src_rows: list, dst_rows: list,
                  weights: list) -> None:
    """The target node and its incoming edges: a logit reads its position through the final norm; a feature target
    reads like any feature."""
    src = torch.cat(nodes.parts)
    src_pos = torch.cat(nodes.cols["pos"])
    pos = torch.tensor([tgt.pos])
    if tgt.kind == "feature":
        l, j = tgt.layer, tgt.feature
        f = fp.saes[l]
        R = f.W_enc[:, j].reshape(1, fp.W[l].n_heads, fp.W[l].d_head)
        ids = nodes.add("target", l, pos, j, torch.tensor([tgt.value]), None,
                        _const(fp, l, pos, R) + f.bias[j])
        _read_edges(fp, l, src, src_pos, pos, R, torch.tensor(ids), src_rows, dst_rows, weights)
        return
    cols = (src_pos == tgt.pos).nonzero()[:, 0]
    ln = fp.final_norm is not None and fp.final_norm.kind == "LN"
    E = (centre(src[cols], ln) / fp.final_scale[tgt.pos] * fp.final_w) @ tgt.direction
    const = float(fp.final_b @ tgt.direction) + tgt.bias
    ids = nodes.add("target", fp.n_layers, pos, tgt.token_ids[0], torch.tensor([tgt.value]), None,
                    torch.tensor([const]))
    src_rows.append(cols)
    dst_rows.append(torch.full((len(cols),), ids[0]))
    weights.append(E)
