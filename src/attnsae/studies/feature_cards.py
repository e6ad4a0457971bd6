"""What a feature card shows when no dashboards folder is given, from the dashboards' own pipeline on fewer tokens:

1. :func:`card_scan`: one pass of :func:`attnsae.studies.scan.scan_features` over a few thousand corpus tokens, keeping
   per feature its firing count (density) and its top :data:`CARD_EXAMPLES` activations;
2. :func:`top_examples`: one feature's top activations explained as the dashboards explain theirs
   (:func:`attnsae.studies.examples.gather_examples`: the activations around each one and its exact DFA by source),
   and its family from them (:mod:`attnsae.studies.families`, with the dashboards' thresholds);
3. :func:`top_logit_tokens`: every feature's top tokens by direct logit effect
   (:func:`attnsae.attribution.logits.logit_effect_matrix`, the definition every view uses), for search;
4. :func:`top_dest_tokens`: the commonest tokens its top activations sit on, as the dashboards count them.

Numbers are raw; the views round them.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor

from attnsae.attribution.logits import logit_effect_matrix
from attnsae.sae.model import SAE
from attnsae.studies import families as fam
from attnsae.studies.examples import DashboardConfig, Entries, gather_examples
from attnsae.studies.scan import FeatureScan, ScanConfig, scan_features

CARD_EXAMPLES = 5  # top activations kept per feature (a card shows them; the family is read from them)


def card_scan(model, saes: list[SAE], tokens: Tensor) -> list[FeatureScan]:
    """Scan ``tokens`` int64 [n_contexts, S] (BOS at 0) for every feature of ``saes`` (CPU copies): per SAE, its
    :class:`FeatureScan` with the top :data:`CARD_EXAMPLES` activations of each feature (no quantile sample)."""
    return scan_features(model, saes, tokens, ScanConfig(n_top=CARD_EXAMPLES, n_sample=1, bins=2), progress=False)


@torch.no_grad()
def top_examples(model, sae: SAE, tokens: Tensor, scan: FeatureScan, feature: int, canon: Tensor,
                 cfg: DashboardConfig | None = None) -> tuple[list[dict], str, dict]:
    """Feature ``feature``'s top activations in ``scan`` of ``tokens`` [n_contexts, S], best first, as the
    dashboards' RAW_EXAMPLEs (:mod:`attnsae.views.dashboards`), with its family read from them and their statistics
    (``"dead"`` and ``{}`` when it never fired). ``sae``: a CPU copy; ``canon``: :func:`fam.canonical_ids` of the
    vocabulary."""
    cfg = cfg or DashboardConfig()
    locs = scan.top_locs[feature][scan.top_locs[feature] >= 0]  # [m], flat context * S + position
    if len(locs) == 0:
        return [], "dead", {}
    S, m = tokens.shape[1], len(locs)
    zeros = torch.zeros(m, dtype=torch.long)
    entries = Entries(sae=zeros, feature=torch.full((m,), feature), ctx=locs // S, dest=locs % S, group=zeros)
    got = gather_examples(model, [sae], tokens, entries, cfg, canon, progress=False)
    stats = fam.feature_stats(got.stats, got.act)
    return got.records, fam.classify(stats, cfg.families), stats


def top_dest_tokens(scan: FeatureScan, tokens: Tensor, feature: int, k: int = 5) -> list[tuple[int, int]]:
    """The ``k`` commonest tokens under feature ``feature``'s top activations: ``[(token id, count)]``."""
    locs = scan.top_locs[feature][scan.top_locs[feature] >= 0]
    return Counter(tokens.reshape(-1)[locs].tolist()).most_common(k)


@torch.no_grad()
def top_logit_tokens(model, sae: SAE, k: int = 10, chunk_bytes: int = 64 * 2**20) -> Tensor:
    """Each feature's ``k`` tokens of largest direct logit effect, largest first: int64 [d_sae, k] (as many features
    at a time as fit ``chunk_bytes`` of [features, d_vocab] float32)."""
    d, d_vocab = sae.cfg.d_sae, int(model.cfg.d_vocab)
    chunk = max(1, chunk_bytes // (4 * d_vocab))
    out = torch.empty(d, min(k, d_vocab), dtype=torch.long)
    for f0 in range(0, d, chunk):
        effect = logit_effect_matrix(model, sae, range(f0, min(f0 + chunk, d)))  # [n, d_vocab]
        out[f0:f0 + len(effect)] = effect.topk(out.shape[1], dim=1).indices
    return out
