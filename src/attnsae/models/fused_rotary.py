"""The fused attention of a rotary (Llama-style) bridge: TransformerLens's ``PositionEmbeddingsAttentionBridge``
forward with ``softmax(q k^T * scaling + mask) v`` through ``scaled_dot_product_attention``.

The bridge's forward (TransformerLens 4.x) projects q, k, v through its ``q``/``k``/``v`` bridges, applies the
rotary embedding (firing ``hook_cos``/``hook_sin`` and ``hook_rot_q``/``hook_rot_k``), then computes the scores, the
mask, a float32 softmax and the pattern in Python so that ``hook_attn_scores`` and ``hook_pattern`` can fire, and
projects through ``o`` (``hook_z``). :func:`fused_forward` runs the same steps with the same hook calls and
replaces only the score-softmax-matmul by SDPA (grouped-query heads served by ``enable_gqa``), on a causal mask
without building it when the mask Hugging Face passes is the plain causal one. :func:`eligible` lists the
architectures whose forward is exactly that (no QK-norm, no soft-capping, no sliding window, no sinks, no gates,
full-width rotary, Llama's rotate-half); everything else keeps the bridge's forward. Scoping, per-call conditions
and the probe that checks both paths agree are :mod:`attnsae.models.fast_attention`'s.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F


def rotary_bridge_type():
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
        PositionEmbeddingsAttentionBridge)

    return PositionEmbeddingsAttentionBridge


def eligible(attn) -> bool:
    """Whether ``attn`` is a rotary bridge whose forward :func:`fused_forward` reproduces step for step."""
    cfg, hf = attn.config, getattr(attn, "original_component", None)
    if type(attn) is not rotary_bridge_type() or cfg is None or hf is None:
        return False
    if any(name in attn._modules for name in ("q_norm", "k_norm", "gate")):
        return False
    flags = ("use_split_qkv_input", "use_attn_in", "gated_q_proj", "use_attn_result", "rotary_interleaved_cos_sin",
             "rotary_adjacent_pairs", "qk_norm_after_rope")
    if any(getattr(cfg, f, False) for f in flags) or getattr(cfg, "positional_embedding_type", None) != "rotary":
        return False
    rope = getattr(getattr(hf, "config", None), "rope_parameters", None)
    if isinstance(rope, dict) and rope.get("llama_4_scaling_beta") is not None:
        return False
    if getattr(getattr(hf, "config", None), "clip_qkv", None) is not None:
        return False
    if any(getattr(hf, a, None) is not None for a in ("key_multiplier", "attn_logit_softcapping", "sinks",
                                                      "sliding_window")):
        return False
    return (getattr(attn, "is_causal", False) and not getattr(attn, "is_cross_attention", False)
            and type(attn)._pre_output_projection is rotary_bridge_type()._pre_output_projection)


_LAST_MASK: list = [None, None]  # [weakref to the last 4D mask judged, (its version, its verdict)]


def mask_verdict(mask: torch.Tensor) -> tuple[bool, bool]:
    """(usable: 4D of the query's shape with no fully masked row, exactly causal) for a 4D mask [batch, 1|heads, q,
    k]; judged once per mask tensor, since one mask object reaches every layer of a forward."""
    ref, seen = _LAST_MASK
    if ref is not None and ref() is mask and seen[0] == mask._version:
        return seen[1]
    S = mask.shape[-2]
    if mask.ndim != 4 or mask.shape[-1] != S:
        verdict = (False, False)
    else:
        masked = ~mask if mask.dtype == torch.bool else mask <= torch.finfo(mask.dtype).min / 2
        future = torch.ones(S, S, dtype=torch.bool, device=mask.device).triu(1)
        causal = (mask.dtype != torch.bool and bool((masked == future).all())
                  and bool((mask.masked_fill(future, 0) == 0).all()))
        verdict = (causal or not bool(masked.all(-1).any()), causal)
    _LAST_MASK[:] = [weakref.ref(mask), (mask._version, verdict)]
    return verdict


def call_inputs(args: tuple, kwargs: dict) -> tuple[torch.Tensor, tuple | None, torch.Tensor | None]:
    """(hidden_states, position_embeddings, attention_mask) of a bridge forward call."""
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    return hidden, kwargs.get("position_embeddings"), kwargs.get("attention_mask")


def fusable_call(attn, args: tuple, kwargs: dict) -> bool:
    """The call-specific conditions of the fused path (beyond :mod:`fast_attention`'s): a tensor input, full-width
    cos/sin, a mask that is absent or 4D of the query's shape with no fully masked row."""
    if not (kwargs.get("hidden_states") is not None or (args and isinstance(args[0], torch.Tensor))):
        return False
    hidden, pe, mask = call_inputs(args, kwargs)
    head_dim = int(attn.original_component.head_dim)
    if not (isinstance(pe, tuple) and len(pe) == 2 and pe[0].shape[-1] == head_dim):
        return False
    return mask is None or (mask.ndim == 4 and mask.shape[-2] == hidden.shape[-2] and mask_verdict(mask)[0])


def fused_forward(attn, *args, **kwargs) -> tuple[torch.Tensor, None]:
    """The bridge's forward with SDPA for the pattern (module docstring); call only when :func:`eligible` and
    :func:`fusable_call`."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    hf = attn.original_component
    hidden, pe, mask = call_inputs(args, kwargs)
    hidden = attn.hook_in(hidden)
    head_dim = int(hf.head_dim)
    shape = (*hidden.shape[:-1], -1, head_dim)
    q = attn.q(hidden).view(shape).transpose(1, 2)  # [batch, head, pos, d_head]
    k = attn.k(hidden).view(shape).transpose(1, 2)  # [batch, kv_head, pos, d_head]
    v = attn.v(hidden).view(shape).transpose(1, 2)
    cos, sin = attn._apply_position_embedding_hooks(pe)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    q, k = attn.hook_rot_q(q), attn.hook_rot_k(k)
    scaling = getattr(hf, "scaling", head_dim ** -0.5)
    causal = mask is None or mask_verdict(mask)[1]
    z = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask, is_causal=causal, scale=scaling,
                                       enable_gqa=q.shape[1] != k.shape[1])
    z = z.transpose(1, 2).reshape(*hidden.shape[:-1], -1)
    w = getattr(getattr(attn, "o", None), "original_component", None)
    w = getattr(w, "weight", None)
    if isinstance(w, torch.Tensor) and w.dtype.is_floating_point and z.dtype != w.dtype:
        z = z.to(w.dtype)
    return attn.hook_out(attn.o(z)), None
