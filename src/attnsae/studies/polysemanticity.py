"""Head polysemanticity: each head's top features by head attribution, and an automatic verdict.

For every head ``h`` of every layer with an SAE, its top ``k`` (10) *live* features by weight-based head attribution
``h_{i,h}`` (PAPER_NOTES §4), each with its family, commonest destination tokens and direct logit effects, read from
the dashboards bundle (:mod:`attnsae.studies.examples`). The paper judged by eye whether a head's top-10 features are
"closely related"; here the judgement is a stated rule (:class:`HeadCriterion`):

* two features are *related* when they have the same family, other than ``unclear``, and either that family is
  ``induction`` (the mechanism is the head's role: "X is next, by induction" for many X), or they share a theme:
  the Jaccard overlap of their commonest destination tokens (case and leading space ignored) or of their top
  positive logit tokens is at least ``jaccard``;
* a head is **monosemantic** when at least ``min_related`` of its feature pairs are related (its score), else
  **polysemantic**.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from itertools import combinations

from attnsae.studies.examples import Dashboards
from attnsae.studies.families import canonical_ids


@dataclass
class HeadCriterion:
    k: int = 10  # top features per head
    jaccard: float = 0.2  # theme overlap that makes two same-family features related
    min_related: float = 0.5  # share of related pairs for a monosemantic verdict
    n_logits: int = 10  # top logit tokens compared

    def describe(self) -> str:
        return (f"each head's top {self.k} live features by head attribution; two are related if they share a family "
                f"other than unclear and either it is induction or their commonest destination tokens or top "
                f"{self.n_logits} logit tokens overlap (Jaccard ≥ {self.jaccard:g}); monosemantic if ≥ "
                f"{self.min_related:.0%} of the pairs are related")


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def related(a: dict, b: dict, canon, crit: HeadCriterion) -> bool:
    """Whether two bundle features are related under ``crit`` (module docstring)."""
    if a["family"] != b["family"] or a["family"] in ("unclear", "dead"):
        return False
    if a["family"] == "induction":
        return True
    toks = [{int(canon[t]) for t, _ in f["top_tokens"]} for f in (a, b)]
    logits = [{int(canon[t]) for t, _ in f["logits"]["pos"][:crit.n_logits]} for f in (a, b)]
    return _jaccard(*toks) >= crit.jaccard or _jaccard(*logits) >= crit.jaccard


def head_report(dash: Dashboards, crit: HeadCriterion | None = None) -> dict:
    """The head report of the dashboards (schema in :mod:`attnsae.views.heads_report`).

    Heads rank features by the exact head attribution (``dash.head_shares``), ties by feature index.
    """
    crit = crit or HeadCriterion()
    bundle = dash.bundle
    vocab = bundle["vocab"]
    canon = canonical_ids(vocab)
    heads = []
    for block, shares in zip(bundle["saes"], dash.head_shares):
        live = [f for f in block["features"] if f["family"] != "dead"]
        for h in range(block["n_heads"]):
            top = sorted(live, key=lambda f: (-float(shares[f["i"], h]), f["i"]))[:crit.k]
            pairs = list(combinations(top, 2))
            score = sum(related(a, b, canon, crit) for a, b in pairs) / len(pairs) if pairs else 0.0
            fam, n = Counter(f["family"] for f in top).most_common(1)[0] if top else ("none", 0)
            heads.append({
                "layer": block["layer"], "head": h, "sae": block["name"],
                "verdict": "monosemantic" if pairs and score >= crit.min_related else "polysemantic",
                "score": score, "dominant_family": fam, "dominant_share": n / max(len(top), 1),
                "features": [{"i": f["i"], "share": float(shares[f["i"], h]), "family": f["family"],
                              "density": f["density"], "top_tokens": [vocab[t] for t, _ in f["top_tokens"]],
                              "logits_pos": [vocab[t] for t, _ in f["logits"]["pos"][:5]],
                              "logits_neg": [vocab[t] for t, _ in f["logits"]["neg"][:5]]} for f in top],
            })
    n_poly = sum(h["verdict"] == "polysemantic" for h in heads)
    return {"title": f"Head polysemanticity — {bundle['model']}", "model": bundle["model"],
            "criterion": crit.describe(), "criterion_params": asdict(crit),
            "summary": f"{n_poly} of {len(heads)} heads polysemantic", "n_polysemantic": n_poly, "n_heads": len(heads),
            "heads": heads}
