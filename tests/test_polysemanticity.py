"""The head verdict's pair rule, :func:`attnsae.studies.polysemanticity.related`, on hand-made bundle features."""

import pytest

from attnsae.studies.families import canonical_ids
from attnsae.studies.polysemanticity import HeadCriterion, related

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
