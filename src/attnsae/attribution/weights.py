"""The weights attribution reads, taken from a TransformerLens ``TransformerBridge`` for GPT-2 and Llama-style models.

One layer's value path is ``ln1 -> W_V (+ b_V) -> pattern -> z -> W_O (+ b_O)``:

    ln1(x)  = γ ⊙ (x − mean(x)) / scale + β      (LayerNorm; ``scale`` is ``blocks.{L}.ln1.hook_scale``)
            = γ ⊙ x / scale                      (RMSNorm: no centring, no β)
    v[s, g] = ln1(x[s]) @ W_V[g] + b_V[g]         ``blocks.{L}.attn.hook_v``: [batch, pos, n_kv_heads, d_head]
    z[t, h] = Σ_s A_h[t, s] v[s, kv(h)]          ``blocks.{L}.attn.hook_z``: [batch, pos, n_heads, d_head]

With grouped-query attention ``n_kv_heads < n_heads`` and query head ``h`` reads value head
``kv(h) = h // (n_heads / n_kv_heads)`` (HF's ``repeat_kv``). Weights come through the bridge's accessors
(``blocks[L].attn.W_V`` is per value head, ``W_O`` per query head), so the same code serves both layouts; a missing
bias (bias-free Llama projections) becomes zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnsae.errors import AttnsaeError


@dataclass
class LayerWeights:
    """The value-path weights of one attention layer, detached, float32, on the CPU."""

    layer: int
    norm: str  # "LN" (centring, γ, β) or "RMS" (γ only)
    ln_w: Tensor  # γ: [d_model]
    ln_b: Tensor  # β: [d_model] (zeros for RMSNorm)
    W_V: Tensor  # [n_kv_heads, d_model, d_head]
    b_V: Tensor  # [n_kv_heads, d_head]
    W_O: Tensor  # [n_heads, d_head, d_model]
    b_O: Tensor  # [d_model]
    has_b_V: bool  # whether the model has a value bias (else b_V is zeros)
    has_b_O: bool

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
        """``W_O`` with heads concatenated: [n_heads * d_head, d_model] (``attn_out = z_cat @ W_O_cat + b_O``)."""
        return self.W_O.reshape(-1, self.W_O.shape[-1])


def kv_of_head(n_heads: int, n_kv_heads: int) -> Tensor:
    """``kv(h) = h // (n_heads // n_kv_heads)``: int64 [n_heads]."""
    if n_heads % n_kv_heads:
        raise AttnsaeError(f"{n_heads} query heads do not split evenly over {n_kv_heads} value heads")
    return torch.arange(n_heads) // (n_heads // n_kv_heads)


def _param(module, name: str) -> Tensor | None:
    try:
        p = getattr(module, name)
    except (AttributeError, RuntimeError, ValueError):
        return None
    return p.detach().float().cpu() if isinstance(p, Tensor) else None


def norm_kind(model) -> str:
    """``"LN"`` or ``"RMS"`` from the model's config; other layouts are refused."""
    kind = str(getattr(model.cfg, "normalization_type", None))
    if kind in ("LN", "LNPre"):
        return "LN"
    if kind in ("RMS", "RMSPre"):
        return "RMS"
    raise AttnsaeError(f"attribution supports LayerNorm or RMSNorm models, not normalization_type {kind!r}")


def norm_params(model, norm_module, d_model: int) -> tuple[Tensor, Tensor]:
    """(γ, β) of a normalisation bridge: [d_model] each; β is zeros for RMSNorm, γ is 1 + w for offset RMSNorm."""
    inner = getattr(norm_module, "_original_component", norm_module)
    w = _param(inner, "weight")
    b = _param(inner, "bias")
    w = torch.ones(d_model) if w is None else w
    if norm_kind(model) == "RMS" and getattr(model.cfg, "rmsnorm_uses_offset", False):
        w = 1.0 + w
    return w, (torch.zeros(d_model) if b is None else b)


@torch.no_grad()
def layer_weights(model, layer: int) -> LayerWeights:
    """Value-path weights of ``blocks[layer]`` (see the module docstring)."""
    c = model.cfg
    if getattr(c, "parallel_attn_mlp", False) or getattr(c, "use_normalization_before_and_after", False):
        raise AttnsaeError("attribution supports sequential pre-norm blocks only (no parallel attention/MLP, "
                           "no post-norms)")
    attn = model.blocks[layer].attn
    W_V, W_O = _param(attn, "W_V"), _param(attn, "W_O")
    if W_V is None or W_O is None:
        raise AttnsaeError(f"cannot read W_V / W_O of blocks.{layer}.attn from this model")
    n_kv, d_model, d_head = W_V.shape
    b_V, b_O = _param(attn, "b_V"), _param(attn, "b_O")
    ln_w, ln_b = norm_params(model, model.blocks[layer].ln1, d_model)
    return LayerWeights(
        layer=layer,
        norm=norm_kind(model),
        ln_w=ln_w,
        ln_b=ln_b,
        W_V=W_V,
        b_V=torch.zeros(n_kv, d_head) if b_V is None else b_V.reshape(n_kv, d_head),
        W_O=W_O,
        b_O=torch.zeros(d_model) if b_O is None else b_O,
        has_b_V=b_V is not None,
        has_b_O=b_O is not None,
    )


@torch.no_grad()
def unembed_weights(model) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(W_U [d_model, d_vocab], b_U [d_vocab], γ_final [d_model], β_final [d_model]), float32."""
    W_U = model.W_U.detach().float().cpu()
    b_U = _param(model, "b_U")
    g, b = norm_params(model, model.ln_final, W_U.shape[0])
    return W_U, torch.zeros(W_U.shape[1]) if b_U is None else b_U, g, b
