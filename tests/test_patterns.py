"""Attention pattern rows from the captured queries and keys (attnsae.attribution.patterns): the model's own pattern,
on GPT-2 and rotary GQA models, odd shapes included, and the forward-pass fallback when the check fails."""

from __future__ import annotations

import pytest
import torch

import attnsae.attribution.patterns as P
import attnsae.attribution.rdfa_prompt as RP
from attnsae.attribution.rdfa_prompt import RDFAPrompt
from attnsae.models import load_model
from attnsae.models.hooks import capture
from conftest import make_gpt2_dir, make_llama_dir, random_sae, random_tokens

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module", params=["gpt2-1head", "llama-gqa", "llama-1head"])
def small(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    if request.param == "gpt2-1head":
        return load_model(make_gpt2_dir(d, n_head=1))
    heads = (4, 2) if request.param == "llama-gqa" else (1, 1)
    return load_model(make_llama_dir(d, n_heads=heads[0], n_kv_heads=heads[1]))


def true_patterns(model, tokens) -> dict[int, torch.Tensor]:
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    c = capture(model, tokens[None], names)
    return {l: c[n][0] for l, n in enumerate(names)}


@pytest.mark.parametrize("length", [1, 2, 12])
def test_rows_from_queries_and_keys_are_the_models_pattern(small, length):
    tokens = random_tokens(1, length, seed=length)[0]
    sae = random_sae(small, 1)
    p = RDFAPrompt(small, sae, tokens, [random_sae(small, 0, seed=1)], keep_logits=True, pattern_bytes=1)
    assert sorted(p.A.qk) == list(range(small.cfg.n_layers)) and not p.A.cache  # nothing S² kept
    want = true_patterns(small, tokens)
    for l, A in want.items():
        for t in range(length):
            torch.testing.assert_close(p.A.row(l, t), A[:, t], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(p.A[1], want[1], atol=1e-6, rtol=1e-5)
    sl = p.saes[1]
    for j in sl.act[-1].nonzero()[:, 0].tolist()[:5]:
        total = float(p.dfa_terms(1, j, length - 1).sum())
        assert total == pytest.approx(float(sl.pre[-1, j] - sl.bias[j]), abs=1e-4)
    assert p.A.captures == 0  # no forward pass for any row or layer


def test_the_reference_model_at_full_length_keeps_no_pattern(ref_model):
    tokens = random_tokens(1, ref_model.cfg.n_ctx, seed=3)[0]
    p = RDFAPrompt(ref_model, random_sae(ref_model, 1, d_sae=128), tokens, pattern_bytes=2**20)
    want = true_patterns(ref_model, tokens)
    for t in (0, 17, ref_model.cfg.n_ctx - 1):
        torch.testing.assert_close(p.A.row(0, t), want[0][:, t], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(p.A.row(1, t), want[1][:, t], atol=1e-6, rtol=1e-5)
    assert p.A.captures == 0 and not p.A.cache


def test_a_layer_the_check_refuses_is_captured_by_a_forward_pass(small, monkeypatch):
    real = P.scaling_of
    monkeypatch.setattr(RP, "scaling_of", lambda model, layer, d_head: real(model, layer, d_head) * (2 - layer))
    tokens = random_tokens(1, 9, seed=5)[0]
    p = RDFAPrompt(small, random_sae(small, 1), tokens, pattern_bytes=1)
    assert 0 not in p.A.qk and 1 in p.A.qk  # the wrong scale fails the check against hook_z
    want = true_patterns(small, tokens)
    torch.testing.assert_close(p.A.row(0, 8), want[0][:, 8], atol=1e-6, rtol=1e-5)
    assert p.A.captures == 1
