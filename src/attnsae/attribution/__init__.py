"""Attribution: explain each feature activation by heads, source tokens and upstream components, exactly.

* :mod:`~attnsae.attribution.head_shares` — weight-based head attribution (each feature's share per head, each head's
  top features).
* :mod:`~attnsae.attribution.dfa` — direct feature attribution by head and source position, for a batch of prompts
  and one feature, a list, or all active features, within a stated memory bound.
* :mod:`~attnsae.attribution.rdfa` — recursive DFA: a tree through value paths whose children and named
  remainders sum to each node.
* :mod:`~attnsae.attribution.logits` — a feature's direct logit effect (top and bottom tokens).
* :mod:`~attnsae.attribution.report` — all of it for one prompt and feature (what ``attnsae attribute`` prints).

Helpers: :mod:`~attnsae.attribution.weights` (value-path weights from a bridge, GPT-2 and Llama/GQA) and
:mod:`~attnsae.attribution.inputs` (checks of SAEs, features and prompts); hook capture is
:mod:`attnsae.models.hooks`. Results are dataclasses of
tensors or lists with ``to_dict()`` for JSON.
"""

from attnsae.attribution.dfa import (
    AttnActivations,
    DFAResult,
    attn_activations,
    dfa,
    dfa_from_activations,
    dfa_reference,
    plan_dfa,
)
from attnsae.attribution.head_shares import HeadAttribution, head_attribution, head_shares
from attnsae.attribution.logits import LogitEffect, logit_effect, logit_effect_matrix
from attnsae.attribution.rdfa import RDFATracer, rdfa
from attnsae.attribution.rdfa_tree import RDFANode, RDFAResult
from attnsae.attribution.report import AttributionReport, attribute

__all__ = [
    "AttnActivations", "DFAResult", "attn_activations", "dfa", "dfa_from_activations", "dfa_reference", "plan_dfa",
    "HeadAttribution", "head_attribution", "head_shares",
    "LogitEffect", "logit_effect", "logit_effect_matrix",
    "RDFANode", "RDFAResult", "RDFATracer", "rdfa",
    "AttributionReport", "attribute",
]
