"""Reading a model's hook points: run it and keep named activations (``capture``), the padding mask an encoder
needs (``attention_mask``), and which key/value head serves each query head (``kv_of_head``, grouped-query attention).

The architecture probe (:mod:`attnsae.models.architecture`) and every attribution stage read models through these.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnsae.errors import AttnsaeError


def kv_of_head(n_heads: int, n_kv_heads: int) -> Tensor:
    """``kv(h) = h // (n_heads // n_kv_heads)``: int64 [n_heads]."""
    if n_heads % n_kv_heads:
        raise AttnsaeError(f"{n_heads} query heads do not split evenly over {n_kv_heads} value heads")
    return torch.arange(n_heads) // (n_heads // n_kv_heads)


def attention_mask(model, tokens: Tensor, lengths: Tensor | None) -> Tensor | None:
    """``[batch, pos]`` ones on real tokens for an encoder with right-padded prompts; None when no mask is needed
    (a causal model, where padding never reaches a real position, or no padding)."""
    from attnsae.models.architecture import describe  # the probe runs capture: imported when used

    if lengths is None or describe(model).causal or int(torch.as_tensor(lengths).min()) >= tokens.shape[1]:
        return None
    return (torch.arange(tokens.shape[1])[None] < torch.as_tensor(lengths).reshape(-1, 1)).long()


@torch.no_grad()
def capture(model, tokens: Tensor, names: list[str], stop_at_layer: int | None = None,
            attention_mask: Tensor | None = None, return_logits: bool = False) -> dict[str, Tensor]:
    """Run the model on ``tokens`` and return the named hook activations (detached, float32).

    Names the model lacks (``hook_pos_embed`` in a rotary model) are skipped. The run stops before block
    ``stop_at_layer`` when given; ``attention_mask`` [batch, pos] (1: real token) hides padding from an encoder.
    ``return_logits`` (with no ``stop_at_layer``) adds the output logits as ``"logits"`` [batch, pos, d_vocab].
    """
    hook_dict = model.hook_dict
    names = [n for n in names if n in hook_dict]
    out: dict[str, Tensor] = {}

    def saver(name: str):
        def save(x: Tensor, hook) -> Tensor:
            out[name] = x.detach().float()
            return x

        return save

    device = next(model.parameters()).device
    stop = stop_at_layer if stop_at_layer is not None and stop_at_layer < model.cfg.n_layers else None
    if return_logits and stop is not None:
        raise AttnsaeError("logits need the whole model: do not stop the run early")
    extra = {} if attention_mask is None else {"attention_mask": attention_mask.to(device)}
    logits = model.run_with_hooks(tokens.to(device), fwd_hooks=[(n, saver(n)) for n in names], stop_at_layer=stop,
                                  return_type="logits" if return_logits else None, **extra)
    if return_logits:
        out["logits"] = logits.detach().float()
    return {n: x.cpu() for n, x in out.items()}
