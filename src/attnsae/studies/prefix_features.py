"""Long- vs short-prefix induction seen through the SAE: which head carries each induction feature, by prefix length.

1. **Induction features** of the layer's SAE, by the families classifier (:mod:`attnsae.studies.families`): the
   features' top activations on the text are explained by DFA by source position, and a feature is ``induction``
   when its DFA mass sits on the token after an earlier occurrence of the current token.
2. **Firings by prefix length.** Every firing ``(context, t)`` of those features (at most ``max_firings`` per
   feature, the first found) gets its exact DFA (:func:`attnsae.attribution.dfa.dfa_from_activations`): its source
   is the DFA peak ``s* = argmax_{1 <= s <= t} DFA(t, s)`` and its prefix length the fuzzy length of ``(t, s*)``
   (:func:`attnsae.studies.prefix_text.prefix_lengths`; ``0`` when the peak is not an induction source).
3. **Which head carries it.** A firing's head share is its DFA by head, positive part, normalised to sum 1. Per
   feature and prefix length: the number of firings, their mean activation and mean head share; the *carrier* is
   the head with the largest mean share (over firings with some positive head DFA). A feature whose short-prefix (``k = 1``) firings are carried by one head
   and long-prefix (``k >= 2``) firings by another shows the heads' specialisation at the feature level.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from attnsae.attribution.dfa import attn_activations, dfa_from_activations
from attnsae.sae.checks import check_sae, cpu_sae
from attnsae.sae.model import SAE
from attnsae.studies import families as fam
from attnsae.studies.examples import DashboardConfig, Entries, gather_examples
from attnsae.studies.patterns import head_name
from attnsae.studies.prefix_text import prefix_lengths
from attnsae.studies.scan import ScanConfig, scan_features


def induction_features(model, sae: SAE, tokens: Tensor, canon: Tensor, thresholds: fam.FamilyThresholds | None = None,
                       n_top: int = 16, progress: bool = True) -> tuple[list[int], dict[int, dict]]:
    """The SAE's induction features on ``tokens`` int64 ``[n, S]``, most frequent first, and every live feature's
    family statistics (:func:`attnsae.studies.families.feature_stats`, with ``family`` and ``n_fired`` added)."""
    cfg = DashboardConfig(scan=ScanConfig(n_top=n_top, n_sample=2), n_bands=1, per_band=0,  # top examples only
                          families=thresholds or fam.FamilyThresholds())
    st = scan_features(model, [sae], tokens, cfg.scan, progress=progress)[0]
    ok = st.top_locs >= 0  # [d_sae, n_top]
    f, j = ok.nonzero(as_tuple=True)
    locs = st.top_locs[f, j]
    S = tokens.shape[1]
    z = torch.zeros_like(f)
    entries = Entries(sae=z, feature=f, ctx=locs // S, dest=locs % S, group=z)
    g = gather_examples(model, [sae], tokens, entries, cfg, canon, progress=progress)
    stats = {}
    for feat in f.unique().tolist():
        idx = (f == feat).nonzero().squeeze(1)
        fs = fam.feature_stats({k: v[idx] for k, v in g.stats.items()}, g.act[idx])
        stats[feat] = fs | {"family": fam.classify(fs, cfg.families), "n_fired": int(st.n_fired[feat])}
    ind = sorted((k for k, v in stats.items() if v["family"] == "induction"), key=lambda k: -stats[k]["n_fired"])
    return ind, stats


@dataclass
class FeatureView:
    """Per feature the summary of step 3 (``features[str(i)]``), and the dense activations of the features on the
    text, ``acts`` float32 ``[n, S, F]`` (F = len(features), in that order) for specificity plots."""

    features: list[int]
    summary: dict
    acts: Tensor
    peak_class: dict[int, int]  # feature -> commonest fuzzy class of its induction sources' tokens (-1: none)


def _group(act: Tensor, share: Tensor, heads: list[str]) -> dict:
    share = share[share.sum(1) > 0]  # a firing with no positive head DFA (bias-driven) has no carrier
    m = share.mean(0) if len(share) else torch.zeros(len(heads))
    return {"n": len(act), "mean_act": float(act.mean()) if len(act) else None, "head_share": m.tolist(),
            "carrier": heads[int(m.argmax())] if len(share) else None}


@torch.no_grad()
def feature_prefix_view(model, sae: SAE, tokens: Tensor, features: list[int], canon: Tensor, max_prefix: int = 9,
                        max_firings: int = 2000, batch_size: int = 16, progress: bool = True) -> FeatureView:
    """Steps 2-3 of the module docstring for ``features`` on ``tokens`` int64 ``[n, S]`` (BOS at 0)."""
    layer = check_sae(model, sae)
    sae = cpu_sae(sae)
    n, S = tokens.shape
    H = model.cfg.n_heads
    heads = [head_name(layer, h) for h in range(H)]
    feats = torch.tensor(features, dtype=torch.long)
    F = len(features)
    dense = torch.zeros(n, S, F)
    seen = torch.zeros(F, dtype=torch.long)
    cols: dict[str, list[Tensor]] = {k: [] for k in ("fi", "act", "prefix", "share", "peak_cls")}
    for i in tqdm(range(0, n, batch_size), desc="feature firings", unit="batch", disable=not progress or F == 0):
        if F == 0:
            break
        toks = tokens[i:i + batch_size]
        acts = attn_activations(model, toks, layer)
        B = len(toks)
        fa = sae.encode(acts.z.reshape(B * S, -1).to(sae.dtype)).float()[:, feats].reshape(B, S, F)
        fa[:, 0] = 0  # BOS is left out, as in training
        dense[i:i + B] = fa
        b, t, fi = (fa > 0).nonzero(as_tuple=True)
        # at most max_firings per feature: rank firings within their feature, in order found
        order = torch.argsort(fi, stable=True)
        b, t, fi = b[order], t[order], fi[order]
        counts = torch.bincount(fi, minlength=F)
        rank = torch.arange(len(fi)) - (counts.cumsum(0) - counts)[fi]
        keep = rank + seen[fi] < max_firings
        b, t, fi = b[keep], t[keep], fi[keep]
        seen += torch.bincount(fi, minlength=F)
        if len(fi) == 0:
            continue
        res = dfa_from_activations(acts, sae, entries=(b, t, feats[fi]))
        src = torch.arange(S)[None]
        masked = torch.where((src >= 1) & (src <= t[:, None]), res.by_src, torch.tensor(-torch.inf))
        peak = masked.argmax(1)
        k = prefix_lengths(toks, b, t, peak, canon)
        pos = res.by_head.clamp_min(0)
        share = pos / pos.sum(1, keepdim=True).clamp_min(1e-12)
        cols["fi"].append(fi)
        cols["act"].append(res.act.float())
        cols["prefix"].append(k)
        cols["share"].append(share)
        cols["peak_cls"].append(torch.where(k >= 1, canon[toks[b, peak]], torch.tensor(-1)))
    if cols["fi"]:
        fi, act, k, share, pcls = (torch.cat(cols[c]) for c in ("fi", "act", "prefix", "share", "peak_cls"))
    else:
        fi = k = pcls = torch.zeros(0, dtype=torch.long)
        act, share = torch.zeros(0), torch.zeros(0, H)
    kc = k.clamp_max(max_prefix)
    summary, peak_class = {}, {}
    for j, f in enumerate(features):
        m = fi == j
        short, long_ = m & (k == 1), m & (k >= 2)
        summary[str(f)] = {
            "n_firings": int(m.sum()),
            "none": _group(act[m & (k == 0)], share[m & (k == 0)], heads),
            "short": _group(act[short], share[short], heads),
            "long": _group(act[long_], share[long_], heads),
            "by_prefix": {str(p): _group(act[m & (kc == p)], share[m & (kc == p)], heads)
                          for p in range(max_prefix + 1) if bool((m & (kc == p)).any())},
        }
        common = Counter(pcls[m & (pcls >= 0)].tolist()).most_common(1)
        peak_class[f] = common[0][0] if common else -1
    return FeatureView(list(features), {"heads": heads, "features": summary}, dense, peak_class)


def carrier_counts(summary: dict) -> dict:
    """How many features each head carries, for short (``k = 1``) and long (``k >= 2``) firings, and how many
    features switch carrier between the two (of those with both kinds of firings)."""
    short, long_ = Counter(), Counter()
    switch = both = 0
    for f in summary["features"].values():
        cs, cl = f["short"]["carrier"], f["long"]["carrier"]
        short.update([cs] if cs else [])
        long_.update([cl] if cl else [])
        if cs and cl:
            both += 1
            switch += cs != cl
    return {"short": dict(short), "long": dict(long_), "n_both": both, "n_switch": switch}
