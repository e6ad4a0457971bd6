"""The head verdict on hand-made bundle features: the pair rule (:func:`attnsae.studies.polysemanticity.related`)
and each head's ranking, score and verdict (:func:`head_report`)."""

import pytest

from attnsae.studies.examples import Dashboards
from attnsae.studies.families import canonical_ids
from attnsae.studies.polysemanticity import HeadCriterion, head_report, related

VOCAB = ["<bos>", "a", " a", "A", "b", "c", "d", "e", "f", "g", "h", "i", " ", "\n", "j", "k"]
ID = {s: i for i, s in enumerate(VOCAB)}
CANON = canonical_ids(VOCAB)


def feature(family: str, tokens: str = "", logits: str = "") -> dict:
    """A bundle feature: its family, commonest destination tokens and top positive logit tokens (space-separated
    names from VOCAB; "_a" is " a", "SP" a space, "NL" a newline)."""
    name = lambda s: {"_a": " a", "SP": " ", "NL": "\n"}.get(s, s)
    return {"family": family,
            "top_tokens": [(ID[name(t)], 10 - i) for i, t in enumerate(tokens.split())],
            "logits": {"pos": [(ID[name(t)], 1.0 - 0.1 * i) for i, t in enumerate(logits.split())],
                       "neg": [(ID["k"], -1.0)]}}


def both_ways(a: dict, b: dict, crit: HeadCriterion | None = None) -> bool:
    crit = crit or HeadCriterion()
    r = related(a, b, CANON, crit)
    assert related(b, a, CANON, crit) == r  # a symmetric relation
    return r


def test_induction_features_are_related_whatever_their_tokens():
    assert both_ways(feature("induction", "a b", "c d"), feature("induction", "e f", "g h"))
    assert not both_ways(feature("induction", "a b", "c d"), feature("short-range", "a b", "c d"))


@pytest.mark.parametrize("family", ["unclear", "dead"])
def test_unclear_and_dead_features_are_never_related(family):
    same = feature(family, "a b c", "d e f")
    assert not both_ways(same, dict(same))


@pytest.mark.parametrize("family", ["short-range", "long-range"])
def test_same_family_needs_a_shared_theme_at_the_jaccard_threshold(family):
    # destination tokens: {a,b,c} vs {c,d,e}: 1/5 = 0.2 (the default threshold) -> related; 1/6 -> not
    assert both_ways(feature(family, "a b c", "f"), feature(family, "c d e", "g"))
    assert not both_ways(feature(family, "a b c", "f"), feature(family, "c d e h", "g"))
    assert not both_ways(feature(family, "a b c", "f"), feature(family, "c d e", "g"), HeadCriterion(jaccard=0.21))
    # case and one leading space are ignored: "a", " a", "A" are one token; a space and a newline are not
    assert both_ways(feature(family, "a b", "f"), feature(family, "A _a c d", "g"))  # {a,b} vs {a,c,d}: 1/4
    assert not both_ways(feature(family, "SP b", "f"), feature(family, "NL c", "g"))
    # or the top positive logit tokens: {d,e} vs {e,f,g}: 1/4; only the first n_logits count
    assert both_ways(feature(family, "a", "d e"), feature(family, "b", "e f g"))
    assert not both_ways(feature(family, "a", "d e"), feature(family, "b", "f g e"), HeadCriterion(n_logits=2))
    # no overlap at all
    assert not both_ways(feature(family, "a b", "c d"), feature(family, "e f", "g h"))


def hand_made_dashboards(families: list[str], tokens: list[str], shares) -> Dashboards:
    """Dashboards of one SAE with two heads: feature i has ``families[i]``, commonest destination tokens
    ``tokens[i]`` (as in ``feature``) and head attribution ``shares[i] = [head 0, head 1]``."""
    import torch

    feats = [dict(feature(f, t, t), i=i, density=0.01) for i, (f, t) in enumerate(zip(families, tokens))]
    bundle = {"model": "hand-made", "vocab": VOCAB, "saes": [{"name": "L1", "layer": 1, "n_heads": 2,
                                                             "features": feats}]}
    return Dashboards(bundle=bundle, scans=[], labels=[families], stats=[[]], counts={},
                      head_shares=[torch.tensor(shares, dtype=torch.float)])


def test_a_head_ranks_its_features_by_exact_share_and_gets_its_verdict_from_the_pair_score():
    """Head 0 reads features 0-3 (three induction features and a short-range one): 3 of its 6 pairs are related,
    score 0.5, exactly the threshold: monosemantic, and polysemantic once the threshold is a hair higher. Head 1 reads
    four short-range features with nothing in common: score 0, polysemantic. Dead features never enter; near-equal
    shares are ranked by value (the bundle would round them to the same number), ties by index."""
    families = ["induction", "induction", "induction", "short-range", "short-range", "short-range", "short-range",
                "short-range", "dead"]
    tokens = ["a", "b", "c", "d", "e", "f", "g", "h", "a"]
    shares = [[0.9, 0.0], [0.8, 0.0], [0.70001, 0.0], [0.7, 0.0],
              [0.0, 0.5], [0.0, 0.6], [0.0, 0.6], [0.0, 0.4], [1.0, 1.0]]
    dash = hand_made_dashboards(families, tokens, shares)
    report = head_report(dash, HeadCriterion(k=4))
    h0, h1 = report["heads"]
    assert [f["i"] for f in h0["features"]] == [0, 1, 2, 3]
    assert [f["i"] for f in h1["features"]] == [5, 6, 4, 7]  # 0.6, 0.6 (tie: lower index first), 0.5, 0.4
    assert (h0["score"], h0["verdict"], h0["dominant_family"], h0["dominant_share"]) == (
        0.5, "monosemantic", "induction", 0.75)
    assert (h1["score"], h1["verdict"]) == (0.0, "polysemantic")
    assert (report["n_polysemantic"], report["summary"]) == (1, "1 of 2 heads polysemantic")
    strict = head_report(dash, HeadCriterion(k=4, min_related=0.51))
    assert [h["verdict"] for h in strict["heads"]] == ["polysemantic", "polysemantic"]
    # swap the near-tie: feature 3 (short-range) now outranks feature 2, and k=3 keeps it instead
    shares[2][0], shares[3][0] = 0.7, 0.70001
    top3 = head_report(hand_made_dashboards(families, tokens, shares), HeadCriterion(k=3))["heads"][0]
    assert [f["i"] for f in top3["features"]] == [0, 1, 3] and top3["score"] == pytest.approx(1 / 3, abs=1e-3)
