"""Attention patterns of one prompt, by layer, without keeping ``[head, dest, src]`` for every layer.

A pattern is the one capture that grows with the prompt's length squared (SmolLM2 at 2,048 tokens: 151 MB a layer),
while a click reads one row of it (DFA of a feature at one destination, one head's attention from one token). So
:class:`Patterns` answers rows from the captured queries and keys when it can:

    A_h[t, :] = softmax(q_h[t] · k_{kv(h)}[:t+1] · scaling)        q [S, H, d_head], k [S, n_kv, d_head]

(``hook_rot_q`` / ``hook_rot_k`` after rotary embeddings, else ``hook_q`` / ``hook_k``; ``scaling`` the attention
module's own, else 1/√d_head), a few hundred microseconds a row at 2,048 tokens. This is the model's attention only
for plain causal softmax attention, so it is **checked** once per layer where the captured ``hook_z`` is known:
rows at four destinations, times the values, must give ``hook_z`` there (fp32 rounding); a layer that fails, or a
model with logit soft-capping, a sliding window or attention sinks, is never reconstructed. Those layers use the
captured patterns (``given``), or else a forward pass stopped after the layer captures ``hook_pattern`` when first
asked, keeping the most recently used layers that fit in ``max_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnsae.models.hooks import capture

CHECK_ROWS = 4  # destinations per layer checked against hook_z


@dataclass
class QK:
    """One layer's queries and keys (float32), and what turns them into a pattern row."""

    q: Tensor  # [S, H, d_head]
    k: Tensor  # [S, n_kv, d_head]
    kv_of_head: Tensor  # int64 [H]
    scaling: float

    def rows(self, dest: Tensor) -> Tensor:
        """``A[:, dest, :]``: [H, len(dest), S] (causal softmax of the scaled scores)."""
        S = self.k.shape[0]
        scores = torch.einsum("thd,shd->hts", self.q[dest], self.k[:, self.kv_of_head]) * self.scaling
        scores = scores.masked_fill(torch.arange(S)[None, :] > dest[:, None], float("-inf"))
        return scores.softmax(-1)

    def matches(self, v: Tensor, z: Tensor) -> bool:
        """Whether rows at :data:`CHECK_ROWS` destinations times ``v`` [S, n_kv, d_head] give ``z`` [S, H, d_head]."""
        S = z.shape[0]
        dest = torch.linspace(0, S - 1, CHECK_ROWS).round().long().unique()
        z_hat = torch.einsum("hts,shd->thd", self.rows(dest), v[:, self.kv_of_head])
        err = float((z_hat - z[dest]).abs().max())
        return err <= 1e-4 * float(z[dest].abs().max()) + 1e-6


def qk_hooks(model, layer: int) -> tuple[str, str]:
    """The hook names whose activations are the scores' queries and keys at ``layer`` (after rotary embeddings)."""
    p = f"blocks.{layer}.attn."
    rot = p + "hook_rot_q" in model.hook_dict and p + "hook_rot_k" in model.hook_dict
    return (p + "hook_rot_q", p + "hook_rot_k") if rot else (p + "hook_q", p + "hook_k")


def plain_softmax(model, layer: int) -> bool:
    """Whether ``layer``'s attention could be plain causal softmax (nothing the row formula leaves out)."""
    attn = model.blocks[layer].attn
    hf = getattr(attn, "original_component", None)
    cfg = getattr(attn, "config", None)
    return not (getattr(hf, "attn_logit_softcapping", None) or getattr(hf, "sliding_window", None)
                or getattr(hf, "sinks", None) is not None or getattr(cfg, "scale_attn_by_inverse_layer_idx", False)
                or getattr(cfg, "attn_scores_soft_cap", -1) > 0)


def scaling_of(model, layer: int, d_head: int) -> float:
    hf = getattr(model.blocks[layer].attn, "original_component", None)
    s = getattr(hf, "scaling", None)
    return float(s) if isinstance(s, (int, float)) else d_head ** -0.5


class Patterns:
    """``hook_pattern`` per layer, float32: rows ``[head, src]`` (:meth:`row`) and whole layers ``[head, dest, src]``
    (``patterns[layer]``), from the module docstring's three sources."""

    def __init__(self, model, tokens: Tensor, max_bytes: int, given: dict[int, Tensor],
                 qk: dict[int, QK] | None = None) -> None:
        self.model, self.tokens, self.max_bytes = model, tokens, max_bytes
        self.cache: dict[int, Tensor] = dict(given)
        self.qk = dict(qk or {})
        self.captures = 0  # forward passes run for patterns after construction

    def __getitem__(self, layer: int) -> Tensor:
        if layer not in self.cache:
            if layer in self.qk:
                S = self.qk[layer].q.shape[0]
                self.cache[layer] = torch.cat([self.qk[layer].rows(torch.arange(i, min(i + 256, S)))
                                               for i in range(0, S, 256)], dim=1)
            else:
                name = f"blocks.{layer}.attn.hook_pattern"
                self.cache[layer] = capture(self.model, self.tokens[None], [name], stop_at_layer=layer + 1)[name][0]
                self.captures += 1
            while len(self.cache) > 1 and sum(a.numel() * 4 for a in self.cache.values()) > self.max_bytes:
                del self.cache[next(iter(self.cache))]
        else:
            self.cache[layer] = self.cache.pop(layer)  # most recently used last
        return self.cache[layer]

    def row(self, layer: int, dest: int) -> Tensor:
        """``A[:, dest, :]`` at ``layer``: [H, S]."""
        if layer not in self.cache and layer in self.qk:
            return self.qk[layer].rows(torch.tensor([dest]))[:, 0]
        return self[layer][:, dest, :]
