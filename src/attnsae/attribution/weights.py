"""The weights attribution reads, taken from a TransformerLens ``TransformerBridge`` in the layout
:func:`attnsae.models.architecture.describe` found on a probe.

One layer's value path is ``norm_in -> W_V (+ b_V) -> pattern -> z -> W_O (+ b_O) -> norm_out``:

    norm_in(x) = γ ⊙ (x − mean(x)) / σ + β       (LayerNorm; ``σ`` is ``blocks.{L}.ln1.hook_scale``)
               = γ ⊙ x / σ                       (RMSNorm; γ = 1 + w for Gemma)
               = x                               (no pre-norm: OLMo 2)
    v[s, g] = norm_in(x[s]) @ W_V[g] + b_V[g]     ``blocks.{L}.attn.hook_v``: [batch, pos, n_kv_heads, d_head]
    z[t, h] = Σ_s A_h[t, s] v[s, kv(h)]          ``blocks.{L}.attn.hook_z``: [batch, pos, n_heads, d_head]
    y       = z_cat @ W_O_cat + b_O
    attn_out = y                                 (no post-norm)
             = γ' ⊙ (y − mean y) / σ' + β'       (a post-attention norm, "sandwich": Gemma 2/3, OLMo 2; ``σ'`` is
                                                  ``blocks.{L}.ln1_post.hook_scale``; RMSNorm has no centring)

With ``σ'`` frozen, ``attn_out`` is linear in ``z`` (:meth:`LayerWeights.out`), as the pre-norm is with ``σ`` frozen.
With grouped-query attention ``n_kv_heads < n_heads`` and query head ``h`` reads value head
``kv(h) = h // (n_heads / n_kv_heads)`` (HF's ``repeat_kv``). A missing bias becomes zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnsae.errors import AttnsaeError
from attnsae.models.architecture import Norm, describe, norm_weights, param
from attnsae.models.hooks import kv_of_head


@dataclass
class LayerWeights:
    """The value-path weights of one attention layer, detached, float32, on the CPU."""

    layer: int
    in_norm: Norm | None  # the norm feeding W_V (None: W_V reads the residual stream)
    ln_w: Tensor  # γ: [d_model] (ones without a pre-norm)
    ln_b: Tensor  # β: [d_model] (zeros without one)
    W_V: Tensor  # [n_kv_heads, d_model, d_head]
    b_V: Tensor  # [n_kv_heads, d_head]
    W_O: Tensor  # [n_heads, d_head, d_model]
    b_O: Tensor  # [d_model]
    has_b_V: bool  # whether the model has a value bias (else b_V is zeros)
    has_b_O: bool
    out_norm: Norm | None = None  # post-attention norm (None: attn_out = z_cat @ W_O_cat + b_O)
    post_w: Tensor | None = None  # γ': [d_model]
    post_b: Tensor | None = None  # β': [d_model]

    @property
    def n_heads(self) -> int:
        return self.W_O.shape[0]

    @property
    def n_kv_heads(self) -> int:
        return self.W_V.shape[0]

    @property
    def d_head(self) -> int:
        return self.W_O.shape[1]

    @property
    def kv_of_head(self) -> Tensor:
        """Value head read by each query head: int64 [n_heads]."""
        return kv_of_head(self.n_heads, self.n_kv_heads)

    @property
    def W_O_cat(self) -> Tensor:
        """``W_O`` with heads concatenated: [n_heads * d_head, d_model] (``y = z_cat @ W_O_cat + b_O``)."""
        return self.W_O.reshape(-1, self.W_O.shape[-1])

    @property
    def centres_input(self) -> bool:
        return self.in_norm is not None and self.in_norm.kind == "LN"

    def out(self, y: Tensor, scale: Tensor | float | None = 1.0) -> Tensor:
        """What the post-attention norm makes of a term ``y`` [..., d_model] of ``z_cat @ W_O_cat + b_O`` with its
        scale frozen (``scale`` [...] or a number; β' not included): ``y`` itself without a post-norm."""
        if self.out_norm is None:
            return y
        if self.out_norm.kind == "LN":
            y = y - y.mean(-1, keepdim=True)
        s = scale[..., None] if isinstance(scale, Tensor) else scale
        return y * self.post_w / s


@torch.no_grad()
def layer_weights(model, layer: int) -> LayerWeights:
    """Value-path weights of ``blocks[layer]`` in the layout the probe found (see the module docstring)."""
    b = describe(model).blocks[layer]
    block = model.blocks[layer]
    attn = block.attn
    W_V, W_O = param(attn, "W_V"), param(attn, "W_O")
    if W_V is None or W_O is None:
        raise AttnsaeError(f"cannot read W_V / W_O of blocks.{layer}.attn from this model")
    n_kv, d_model, d_head = W_V.shape
    b_V, b_O = param(attn, "b_V"), param(attn, "b_O")
    ln_w, ln_b = norm_weights(block.ln1, b.attn_in, d_model) if b.attn_in else (torch.ones(d_model),
                                                                                 torch.zeros(d_model))
    post_w, post_b = norm_weights(block.ln1_post, b.attn_out, d_model) if b.attn_out else (None, None)
    return LayerWeights(
        layer=layer, in_norm=b.attn_in, ln_w=ln_w, ln_b=ln_b, W_V=W_V,
        b_V=torch.zeros(n_kv, d_head) if b_V is None else b_V.reshape(n_kv, d_head),
        W_O=W_O, b_O=torch.zeros(d_model) if b_O is None else b_O,
        has_b_V=b_V is not None, has_b_O=b_O is not None, out_norm=b.attn_out, post_w=post_w, post_b=post_b,
    )


@torch.no_grad()
def unembed_weights(model) -> tuple[Tensor, Tensor, Norm | None, Tensor, Tensor]:
    """(W_U [d_model, d_vocab], b_U [d_vocab], the final norm, its γ [d_model], β [d_model]), float32."""
    W_U = model.W_U.detach().float().cpu()
    b_U = param(model, "b_U")
    final = describe(model).final_norm
    d = W_U.shape[0]
    g, b = norm_weights(model.ln_final, final, d) if final else (torch.ones(d), torch.zeros(d))
    return W_U, torch.zeros(W_U.shape[1]) if b_U is None else b_U, final, g, b
