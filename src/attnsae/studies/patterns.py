"""Read attention patterns (``blocks.{L}.attn.hook_pattern`` ``[batch, head, dest, src]``) without keeping them.

Studies of heads need a few entries of each pattern, not the ``[batch, head, pos, pos]`` tensors of every layer (for
a 30-layer model that is hundreds of MB per batch). The hooks here read what is asked for as the forward pass goes,
and the pass stops after the last layer needed. Heads are named ``L{layer}H{head}``, as in the model card.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnsae.models import check_tokens


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def all_heads(model) -> list[tuple[int, int]]:
    """Every (layer, head) of the model, in order."""
    return [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


def _pattern_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


@torch.no_grad()
def _run(model, tokens: Tensor, layers: list[int], read) -> None:
    """Run ``tokens`` with ``read(layer, pattern)`` on the patterns of ``layers``, stopping after the last one."""
    tokens = check_tokens(model, tokens)
    last = max(layers) + 1

    def reader(layer: int):
        def hook_fn(x: Tensor, hook) -> Tensor:
            read(layer, x.detach())
            return x

        return hook_fn

    hooks = [(_pattern_name(l), reader(l)) for l in sorted(set(layers))]
    model.run_with_hooks(tokens, fwd_hooks=hooks, return_type=None,
                         stop_at_layer=last if last < model.cfg.n_layers else None)


def attention_at(model, tokens: Tensor, dest: Tensor, src: Tensor) -> Tensor:
    """Attention of every head from ``dest[b]`` to ``src[b]`` in row ``b``: float32 ``[batch, n_layers, n_heads]``.

    tokens: int64 ``[batch, pos]``; dest, src: int64 ``[batch]``.
    """
    B = tokens.shape[0]
    out = torch.zeros(B, model.cfg.n_layers, model.cfg.n_heads)
    rows = torch.arange(B)

    def read(layer: int, p: Tensor) -> None:  # p: [batch, head, dest, src]
        out[:, layer] = p[rows, :, dest.to(p.device), src.to(p.device)].float().cpu()

    _run(model, tokens, list(range(model.cfg.n_layers)), read)
    return out


def head_patterns(model, tokens: Tensor, heads: list[tuple[int, int]]) -> Tensor:
    """The patterns of the given heads only: float32 ``[batch, len(heads), dest, src]`` (in the order of ``heads``)."""
    B, S = tokens.shape
    out = torch.zeros(B, len(heads), S, S)

    def read(layer: int, p: Tensor) -> None:
        for i, (l, h) in enumerate(heads):
            if l == layer:
                out[:, i] = p[:, h].float().cpu()

    _run(model, tokens, [l for l, _ in heads], read)
    return out
