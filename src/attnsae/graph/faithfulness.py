"""Faithfulness measured on the real model, attention and norms unfrozen (:func:`faithfulness`).

The graph is exact for the frozen model; these numbers say how far that carries to the model itself. A node is
removed by subtracting its part from the residual stream where it enters (``hook_attn_out`` for features, heads, SAE
errors and constant outputs; ``hook_mlp_out``; the embedding hooks) and running the model on, every attention
pattern and norm recomputed:

* **keep the circuit**: every active SAE feature outside the pruned graph is ablated at once, to zero and to its mean
  over the prompt's positions; reported as the share of the target kept, ``ablated / clean``, beside the share kept
  when every active feature is ablated (the floor the circuit is measured against);
* **one node at a time**: the ``top`` nodes by |effect| are removed one by one; the real change of the target is set
  beside the graph's prediction (its effect), with their correlation.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from attnsae.graph.frozen import FrozenPrompt
from attnsae.graph.graph import KINDS, Graph
from attnsae.graph.target import Target


def part_of(fp: FrozenPrompt, graph: Graph, i: int) -> tuple[str, Tensor]:
    """The hook where node ``i`` enters the residual stream and its part there, [d_model] at its position."""
    k, l, p, j = KINDS[int(graph.kind[i])], int(graph.layer[i]), int(graph.pos[i]), int(graph.index[i])
    if k == "feature":
        f = fp.saes[l]
        return f"blocks.{l}.hook_attn_out", f.act[p, j] * fp.feature_outputs(l, torch.tensor([[p, j]]))[0]
    if k == "head":
        return f"blocks.{l}.hook_attn_out", fp.head_outputs(l)[p, j]
    if k == "error":
        ps = fp.post_scale[l]
        return f"blocks.{l}.hook_attn_out", fp.W[l].out(fp.error(l)[p] @ fp.W[l].W_O_cat,
                                                        1.0 if ps is None else float(ps[p]))
    if k == "bias":
        return f"blocks.{l}.hook_attn_out", fp.bias_part(l)[p]
    if k == "mlp":
        return f"blocks.{l}.hook_mlp_out", (fp.mlp_lin[l] if fp.mlp_mode == "linear" else fp.mlp[l])[p]
    if k == "mlp_rest":
        return f"blocks.{l}.hook_mlp_out", fp.mlp_rest[l][p]
    return ("hook_embed" if k == "token" else "hook_pos_embed"), fp.embeds["hook_embed" if k == "token"
                                                                           else "hook_pos_embed"][p]


@torch.no_grad()
def real_target(model, fp: FrozenPrompt, tgt: Target, edits: dict[str, Tensor]) -> float:
    """The target on the real model with ``edits[hook]`` [S, d_model] subtracted at each hook."""
    device = next(model.parameters()).device

    def hook(name: str):
        def sub(x: Tensor, hook) -> Tensor:
            return x - edits[name].to(x.device, x.dtype)[None]
        return sub

    hooks = [(n, hook(n)) for n in edits]
    if tgt.kind == "feature":
        got: dict[str, Tensor] = {}
        name = f"blocks.{tgt.layer}.attn.hook_z"
        hooks.append((name, lambda z, hook: got.__setitem__("z", z.detach().float()) or z))
        model.run_with_hooks(fp.tokens[None].to(device), fwd_hooks=hooks, stop_at_layer=tgt.layer + 1)
        f = fp.saes[tgt.layer]
        z = got["z"][0, tgt.pos].reshape(-1).cpu()
        return float(z @ f.W_enc[:, tgt.feature] + f.bias[tgt.feature])
    logits = model.run_with_hooks(fp.tokens[None].to(device), fwd_hooks=hooks)[0, tgt.pos].float().cpu()
    ids = tgt.token_ids
    return float(logits[ids[0]] - (logits[ids[1]] if len(ids) == 2 else 0.0))


def _removal(fp: FrozenPrompt, graph: Graph, ids: list[int], scale: dict[int, float] | None = None
             ) -> dict[str, Tensor]:
    """Per hook, the parts of nodes ``ids`` [S, d_model] (each times ``scale[i]``, default 1)."""
    out: dict[str, Tensor] = defaultdict(lambda: torch.zeros(fp.S, fp.W[0].W_O.shape[-1]))
    for i in ids:
        name, part = part_of(fp, graph, i)
        out[name][int(graph.pos[i])] += part * (1.0 if scale is None else scale[i])
    return dict(out)


def faithfulness(model, fp: FrozenPrompt, graph: Graph, tgt: Target, keep: Tensor, top: int = 10) -> dict:
    """The measurements of the module docstring; ``keep`` bool [N] is the pruned graph's node mask."""
    clean = real_target(model, fp, tgt, {})
    features = graph.is_kind("feature")
    outside = (features & ~keep).nonzero()[:, 0].tolist()
    every = features.nonzero()[:, 0].tolist()
    mean = {l: f.act.mean(0) for l, f in fp.saes.items()}  # [d_sae]: over the prompt's positions
    to_mean = {i: 1 - float(mean[int(graph.layer[i])][int(graph.index[i])])
               / float(fp.saes[int(graph.layer[i])].act[int(graph.pos[i]), int(graph.index[i])]) for i in every}

    def kept(ids: list[int], scale=None) -> float | None:
        return real_target(model, fp, tgt, _removal(fp, graph, ids, scale)) / clean if clean else None

    ranked = [i for i in graph.effect.abs().argsort(descending=True).tolist() if KINDS[int(graph.kind[i])] != "target"]
    one = [{"node": graph.name(i), "predicted": float(graph.effect[i]),
            "real": clean - real_target(model, fp, tgt, _removal(fp, graph, [i]))} for i in ranked[:top]]
    pred = torch.tensor([r["predicted"] for r in one], dtype=torch.float64)
    real = torch.tensor([r["real"] for r in one], dtype=torch.float64)
    corr = float(torch.corrcoef(torch.stack([pred, real]))[0, 1]) if len(one) > 1 else None
    return {"clean": clean,
            "kept_zero": kept(outside), "kept_mean": kept(outside, to_mean),
            "floor_zero": kept(every), "floor_mean": kept(every, to_mean),
            "n_features_kept": len(every) - len(outside), "n_features_ablated": len(outside),
            "one_at_a_time": one, "correlation": corr}
