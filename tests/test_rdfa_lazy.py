"""RDFA's residual-stream components built on first use (``lazy_components``, what the explorer asks for so that a
prompt's features come sooner): the same tree as built eagerly, and a failed check refused every time."""

from __future__ import annotations

import pytest

from attnsae.attribution.rdfa import RDFATracer
from attnsae.attribution.rdfa_prompt import RDFAPrompt
from attnsae.errors import AttnsaeError
from conftest import random_sae, random_tokens

pytestmark = pytest.mark.unit


def test_lazy_components_give_the_eager_tree(ref_model):
    tokens = random_tokens(1, 20, seed=4)[0]
    saes = [random_sae(ref_model, 0, seed=1), random_sae(ref_model, 1, seed=2)]
    eager = RDFATracer(ref_model, saes[1], tokens, [saes[0]])
    lazy = RDFATracer(ref_model, saes[1], tokens, [saes[0]], lazy_components=True)
    assert "comps" in vars(eager) and "comps" not in vars(lazy)
    j = int(eager.saes[1].act[-1].nonzero()[0, 0])
    root = lazy.expand("feature", 1, 19, j)  # a feature lists its head-source terms: no components needed
    assert "comps" not in vars(lazy)
    child = max(root.children, key=lambda c: abs(c.value))
    a = eager.expand("head_source", 1, 19, j, 1.0, child.head, child.source)
    b = lazy.expand("head_source", 1, 19, j, 1.0, child.head, child.source)
    assert "comps" in vars(lazy)
    assert [(c.name, c.value) for c in a.children] == [(c.name, c.value) for c in b.children]


def test_a_lazy_check_that_fails_is_refused_every_time(ref_model, monkeypatch):
    def broken(self, c):
        raise AttnsaeError("RDFA cannot decompose this model: test")

    monkeypatch.setattr(RDFAPrompt, "_check", broken)
    tracer = RDFATracer(ref_model, random_sae(ref_model, 1), random_tokens(1, 8)[0], lazy_components=True)
    for _ in range(2):
        with pytest.raises(AttnsaeError, match="cannot decompose"):
            tracer.comps
    with pytest.raises(AttributeError):
        tracer.no_such_attribute
