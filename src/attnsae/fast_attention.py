"""Fused attention wherever nothing reads the attention pattern: :func:`install`.

The TransformerBridge recomputes attention in Python (scores, mask, softmax, pattern matmul) so that it can expose
``hook_attn_scores`` and ``hook_pattern``. Most forwards read neither (a harvest, an evaluation, a dashboard scan
read ``hook_z`` or the logits). After :func:`install` (done by :func:`attnsae.models.load_model`), each plain
GPT-2-style attention (:class:`JointQKVAttentionBridge` with no per-head result, no fp32 upcast, no inverse-layer
scaling) decides at every call: when no hook sits on its scores or pattern and the mask is Hugging Face's 4D mask,
it computes ``softmax(q k^T * scale + mask) v`` with ``torch.nn.functional.scaled_dot_product_attention`` and goes on
exactly as the bridge does (its ``hook_z``, then the output projection); otherwise (``run_with_cache`` of the
pattern, DFA's captures, any hook there) it runs the bridge's own code. The two agree to fp32 rounding.
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
            and not getattr(cfg, "scale_attn_by_inverse_layer_idx", False)
            and not getattr(attn, "_reorder_and_upcast_attn", False))


def _fused(attn, original):
    """A ``_reconstruct_attention`` for ``attn`` through SDPA; ``original`` for the calls it does not cover."""
    n_heads = attn.config.n_heads
    n_kv = getattr(attn.config, "n_key_value_heads", None) or n_heads

    def reconstruct(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> tuple:
        mask = kwargs.get("attention_mask")
        if (mask is None or mask.ndim != 4 or attn.hook_attn_scores._forward_hooks or attn.hook_pattern._forward_hooks
                or getattr(attn.config, "use_attn_result", False)):
            return original(q, k, v, **kwargs)
        q, k, v, batch, seq, d_head = attn._reshape_qkv_to_heads(q, k, v, n_heads, n_kv)  # [batch, head, pos, d]
        k, v = attn._update_kv_cache(k, v, **kwargs)  # as the bridge does (generation reads it)
        if n_kv != n_heads:
            k = k.repeat_interleave(n_heads // n_kv, dim=1)
            v = v.repeat_interleave(n_heads // n_kv, dim=1)
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[..., :seq, :k.shape[-2]], scale=d_head ** -0.5)
        z = attn._reshape_attn_output(z, batch, seq, n_heads, d_head)
        return attn._apply_output_projection(z), None

    return reconstruct


def install(model) -> int:
    """Give every eligible attention layer of ``model`` the fused path (idempotent); returns how many have it."""
    n = 0
    for block in getattr(model, "blocks", []):
        attn = getattr(block, "attn", None)
        if attn is None or not _eligible(attn):
            continue
        if "_reconstruct_attention" not in vars(attn):
            attn._reconstruct_attention = _fused(attn, attn._reconstruct_attention)
        n += 1
    return n


@contextlib.contextmanager
def bridge_attention(model) -> Iterator[None]:
    """Within the block, the bridge's own attention everywhere (to compare a forward bit for bit with a capture that
    hooked the patterns); the fused path is back after it."""
    fused = [b.attn for b in getattr(model, "blocks", []) if "_reconstruct_attention" in vars(getattr(b, "attn", b))]
    saved = [vars(a).pop("_reconstruct_attention") for a in fused]
    try:
        yield
    finally:
        for a, f in zip(fused, saved):
            a._reconstruct_attention = f

