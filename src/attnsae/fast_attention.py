"""Fused attention for forwards that read only ``hook_z``: :func:`sdpa_attention`.

The TransformerBridge recomputes attention in Python (scores, mask, softmax, pattern matmul) so that it can expose
``hook_attn_scores`` and ``hook_pattern``. A harvest reads neither, so inside :func:`sdpa_attention` each plain
GPT-2-style attention (:class:`JointQKVAttentionBridge` with no hook on its scores or pattern, no per-head result,
no fp32 upcast, a Hugging Face 4D mask) computes ``softmax(q k^T * scale + mask) v`` with
``torch.nn.functional.scaled_dot_product_attention`` instead, and then goes on exactly as the bridge does (its
``hook_z`` and output projection). The result equals the bridge's to fp32 rounding; any other attention keeps the
bridge's own computation.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F


def _eligible(attn) -> bool:
    from transformer_lens.model_bridge.generalized_components.joint_qkv_attention import JointQKVAttentionBridge

    cfg = attn.config
    return (type(attn) is JointQKVAttentionBridge and cfg is not None
            and not getattr(cfg, "use_attn_result", False)
            and not getattr(cfg, "scale_attn_by_inverse_layer_idx", False)
            and not getattr(attn, "_reorder_and_upcast_attn", False)
            and not attn.hook_attn_scores._forward_hooks and not attn.hook_pattern._forward_hooks)


def _sdpa(attn, original):
    """A ``_reconstruct_attention`` for ``attn`` through SDPA; ``original`` for calls it does not cover."""
    n_heads = attn.config.n_heads
    n_kv = getattr(attn.config, "n_key_value_heads", None) or n_heads

    def reconstruct(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> tuple:
        mask = kwargs.get("attention_mask")
        if mask is None or mask.ndim != 4:
            return original(q, k, v, **kwargs)
        q, k, v, batch, seq, d_head = attn._reshape_qkv_to_heads(q, k, v, n_heads, n_kv)  # [batch, head, pos, d]
        if n_kv != n_heads:
            k = k.repeat_interleave(n_heads // n_kv, dim=1)
            v = v.repeat_interleave(n_heads // n_kv, dim=1)
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[..., :seq, :k.shape[-2]], scale=d_head ** -0.5)
        z = attn._reshape_attn_output(z, batch, seq, n_heads, d_head)
        return attn._apply_output_projection(z), None

    return reconstruct


@contextlib.contextmanager
def sdpa_attention(model) -> Iterator[int]:
    """Within the block, every eligible attention layer of ``model`` uses SDPA; yields how many do."""
    patched = []
    for block in getattr(model, "blocks", []):
        attn = getattr(block, "attn", None)
        if attn is not None and _eligible(attn):
            original = attn._reconstruct_attention
            attn._reconstruct_attention = _sdpa(attn, original)
            patched.append(attn)
    try:
        yield len(patched)
    finally:
        for attn in patched:
            del attn._reconstruct_attention  # back to the class's method
