"""Direct logit effect of a feature: its decoder row written through W_O (and a post-attention norm), through the
final norm with its scale frozen, and read by the unembedding. One definition, used by every command and view
(``attribute``, the dashboards, the explorer's chips and Effect panel, the exactness check):

    effect_i = final(out(d_i @ W_O_cat)) @ W_U    [d_vocab]    (d_i = W_dec[i], W_O_cat [n_heads*d_head, d_model])

``out`` is the identity, or a post-attention norm (sandwich norms: Gemma 2/3, OLMo 2) with its scale frozen: centred
for LayerNorm, times γ'. ``final`` is the final norm with its scale frozen: centred (LayerNorm), times γ (``1 + w``
for Gemma's RMSNorm). The 1/σ factors of both norms are positive constants per position, so the ranking of tokens is
unchanged and they are left out: at position t the feature's direct-path logits are
``f_i[t] · effect_i / (σ'[t] · σ_final[t])``. A model whose LM head is not a linear read-out of the final norm (an MLM
transform), whose head is untrained, or whose later blocks do not add to the residual stream is refused with one line.
The result lists the top and bottom tokens by effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from attnsae.attribution.inputs import check_features
from attnsae.sae.checks import check_sae
from attnsae.models.architecture import require
from attnsae.attribution.weights import layer_weights, unembed_weights
from attnsae.sae.model import SAE


DEFINITION = ("the decoder row through W_O and the final norm (its scale frozen: multiply by 1/sigma_final at a "
              "position) to the unembedding")


@dataclass
class LogitEffect:
    """Top and bottom tokens of one feature's direct logit effect (best first), as plain lists."""

    feature: int
    layer: int
    top_tokens: list[int]
    top_strs: list[str]
    top_values: list[float]
    bottom_tokens: list[int]
    bottom_strs: list[str]
    bottom_values: list[float]
    definition: str = DEFINITION

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@torch.no_grad()
def logit_effect_matrix(model, sae: SAE, features: Sequence[int], tokens: Sequence[int] | None = None) -> torch.Tensor:
    """``final(out(W_dec[features] @ W_O_cat)) @ W_U``: float32 [len(features), d_vocab], or
    [len(features), len(tokens)] with only the ``tokens`` columns of ``W_U`` (the module docstring)."""
    layer = check_sae(model, sae)
    features = check_features(sae, features)
    require(model, "logit_effect", layer)
    W = layer_weights(model, layer)
    direction = W.out(sae.W_dec.detach()[features].float().cpu() @ W.W_O_cat)  # [n, d_model]
    W_U, _, final, g, _ = unembed_weights(model)
    if final is not None:
        if final.kind == "LN":
            direction = direction - direction.mean(-1, keepdim=True)
        direction = direction * g
    return direction @ (W_U if tokens is None else W_U[:, torch.as_tensor(tokens, dtype=torch.long)])


def logit_effect(model, sae: SAE, feature: int, k: int = 10) -> LogitEffect:
    """The ``k`` tokens a feature's output pushes up most and down most."""
    effect = logit_effect_matrix(model, sae, [feature])[0]
    k = min(k, len(effect))
    top, bottom = effect.topk(k), effect.topk(k, largest=False)
    decode = model.tokenizer.decode
    return LogitEffect(
        feature=int(feature), layer=check_sae(model, sae),
        top_tokens=top.indices.tolist(), top_strs=[decode([int(i)]) for i in top.indices],
        top_values=top.values.tolist(),
        bottom_tokens=bottom.indices.tolist(), bottom_strs=[decode([int(i)]) for i in bottom.indices],
        bottom_values=bottom.values.tolist(),
    )
