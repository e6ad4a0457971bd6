"""One prompt, one feature: everything ``attnsae attribute`` shows, as plain data.

The feature's activation at a position (default: where it is largest), its DFA by source position and head, the RDFA
tree to the chosen depth, and its direct logit effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from attnsae.models.architecture import describe
from attnsae.attribution.inputs import check_features, tokenize
from attnsae.sae.checks import check_sae
from attnsae.attribution.logits import LogitEffect, logit_effect
from attnsae.attribution.rdfa import RDFATracer
from attnsae.attribution.rdfa_tree import CLOSURE_TOLERANCE, RDFAResult
from attnsae.sae.model import SAE


@dataclass
class AttributionReport:
    prompt: str
    layer: int
    feature: int
    position: int
    activation: float
    pre_activation: float
    bias: float  # b_enc − b_dec·W_enc[:, feature]: pre_activation = Σ by_src + bias
    rdfa: RDFAResult  # a depth-0 tree (plain DFA) when ``rdfa_refused``
    logits: LogitEffect | None  # None when ``logits_refused``
    max_relative_residual: float  # the worst closure error of the tree (fp32: ~1e-6)
    tolerance: float = CLOSURE_TOLERANCE  # past it the tree does not close: the CLI errors, JSON says closes=false
    rdfa_refused: str | None = None  # why this model's layout cannot be traced past plain DFA
    logits_refused: str | None = None  # why it has no direct logit effect

    @property
    def closes(self) -> bool:
        return self.max_relative_residual <= self.tolerance

    def top_sources(self, k: int = 10) -> list[dict]:
        """The ``k`` source positions with the largest |DFA|: ``{source, token, value}``."""
        by_src = self.rdfa.by_src
        order = sorted(range(len(by_src)), key=lambda s: -abs(by_src[s]))[:k]  # after the position too in an encoder
        return [{"source": s, "token": self.rdfa.token_strs[s], "value": by_src[s]} for s in order]

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "layer": self.layer, "feature": self.feature, "position": self.position,
                "activation": self.activation, "pre_activation": self.pre_activation, "bias": self.bias,
                "max_relative_residual": self.max_relative_residual, "tolerance": self.tolerance,
                "closes": self.closes, "top_sources": self.top_sources(),
                "rdfa": self.rdfa.to_dict(), "rdfa_refused": self.rdfa_refused,
                "logits": None if self.logits is None else self.logits.to_dict(), "logits_refused": self.logits_refused}


def attribute(model, sae: SAE, prompt: str, feature: int, position: int | None = None, *, depth: int = 2,
              top_k: int = 5, upstream_saes: Sequence[SAE] | Mapping[int, SAE] = (), n_logit_tokens: int = 10,
              centre_components: bool = True) -> AttributionReport:
    """Explain ``feature`` of ``sae`` on ``prompt`` (tokenised with BOS as in training) at ``position``."""
    layer = check_sae(model, sae)
    (feature,) = check_features(sae, feature)
    tokens, _ = tokenize(model, prompt, sae.cfg.prepend_bos)
    tracer = RDFATracer(model, sae, tokens, upstream_saes, centre_components, dfa_fallback=True)
    result = tracer.trace(feature, position, depth, top_k)
    top = tracer.saes[layer]
    t = result.position
    logits_refused = describe(model).refusal("logit_effect", layer)
    return AttributionReport(
        prompt=prompt, layer=layer, feature=feature, position=t, activation=float(top.act[t, feature]),
        pre_activation=float(top.pre[t, feature]), bias=float(top.bias[feature]), rdfa=result,
        logits=None if logits_refused else logit_effect(model, sae, feature, n_logit_tokens),
        max_relative_residual=result.max_relative_residual(), rdfa_refused=tracer.refused,
        logits_refused=logits_refused,
    )
