"""The fused attention is a scoped fast path (issue 25 §1): ``load_model`` leaves the bridge as TransformerLens made it;
inside ``with fused_attention(model)`` the forwards that nothing inspects run SDPA, and everything a user can do to
the model still sees the bridge's own attention: a deep copy, backward and pre-forward hooks, global hooks, train
mode (dropout), generation with a KV cache, hooks added midway. A probe at entry refuses a fast path that disagrees.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch.nn.modules.module import register_module_forward_hook

from attnsae.models.fast_attention import fused_attention, method_of
from conftest import make_llama_dir

PROMPT = "import os\nfor i in range(10):\n    print(os.path.join('a', str(i)))\n"


def tokens_of(model, n: int = 2):
    t = model.to_tokens(PROMPT)
    return t.repeat(n, 1)


def fused_layers(model) -> list[int]:
    """The layers whose attention module holds the fused method now."""
    return [i for i, b in enumerate(model.blocks) if {"_reconstruct_attention", "forward"} & set(vars(b.attn))]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A random rotary model with grouped-query attention (4 query heads on 2 key/value heads)."""
    return make_llama_dir(tmp_path_factory.mktemp("llama"), n_heads=4, n_kv_heads=2)


@pytest.fixture(scope="module")
def llama(llama_dir):
    from attnsae.models import load_model

    return load_model(llama_dir)


@pytest.fixture(params=["gpt2", "llama"])
def model(request, ref_model, llama):
    """The reference GPT-2 (joint QKV attention) and a Llama-style rotary model: both fused paths."""
    return ref_model if request.param == "gpt2" else llama


def test_load_model_leaves_the_bridge_untouched_and_the_block_restores_it(model):
    assert fused_layers(model) == []
    with fused_attention(model) as n:
        assert n == 2 and fused_layers(model) == [0, 1]
        with fused_attention(model) as inner:  # nested: the outer block's state
            assert inner == 2
        assert fused_layers(model) == [0, 1]
    assert fused_layers(model) == []


def test_fused_forward_gives_the_bridges_logits_and_hook_z(model):
    t = tokens_of(model)
    logits, cache = model.run_with_cache(t)  # caching the patterns: the bridge's own attention
    got = []
    hooks = [(f"blocks.{l}.attn.hook_z", lambda z, hook: got.append(z.detach())) for l in (0, 1)]
    with fused_attention(model):
        pass  # the probe at first entry, outside the count
    real, calls = torch.nn.functional.scaled_dot_product_attention, []
    try:
        torch.nn.functional.scaled_dot_product_attention = lambda *a, **k: calls.append(1) or real(*a, **k)
        with fused_attention(model):
            fused = model.run_with_hooks(t, fwd_hooks=hooks)
    finally:
        torch.nn.functional.scaled_dot_product_attention = real
    assert len(calls) == 2 and {method_of(b.attn) for b in model.blocks} == (
        {"forward"} if model.cfg.positional_embedding_type == "rotary" else {"_reconstruct_attention"})
    torch.testing.assert_close(fused, logits, rtol=1e-4, atol=1e-4)
    assert len(got) == 2
    for l, z in enumerate(got):
        torch.testing.assert_close(z, cache[f"blocks.{l}.attn.hook_z"], rtol=1e-5, atol=1e-5)


def test_a_deep_copy_runs_its_own_attention_inside_and_outside_the_block(model):
    """A copy (TransformerLens supports deep-copying a bridge as a control model) reads its own weights and fires
    its own hooks, whether it was made inside a fused block or not."""
    t = tokens_of(model, 1)
    torch.set_grad_enabled(False)  # the bridge keeps its last pattern; with a graph attached, no deep copy is taken
    try:
        _deep_copies(model, t)
    finally:
        torch.set_grad_enabled(True)


def _deep_copies(model, t) -> None:
    model(t)
    with fused_attention(model):
        twin = copy.deepcopy(model)
        clean = model(t)
    for m in (twin, copy.deepcopy(model)):
        fired = []
        m.blocks[1].attn.hook_z.add_hook(lambda z, hook: fired.append(hook.name))
        m.blocks[1].attn.o.original_component.weight.zero_()  # W_O of layer 1, the copy's only
        with fused_attention(model), fused_attention(m):
            moved = m(t)
            still = model(t)
        m.reset_hooks()
        assert fired == ["blocks.1.attn.o.hook_in"]  # hook_z, by its real name: once, in the copy's forward
        assert not torch.allclose(moved, clean, atol=1e-3)  # the copy's own W_O
        torch.testing.assert_close(still, clean)  # the original is untouched


def test_backward_and_pre_forward_hooks_on_the_pattern_fire_inside_the_block(model):
    t = tokens_of(model, 1)
    grads, pre = [], []
    model.blocks[1].attn.hook_pattern.add_hook(lambda g, hook: grads.append(g.shape), dir="bwd")
    handle = model.blocks[0].attn.hook_attn_scores.register_forward_pre_hook(lambda mod, args: pre.append(1))
    try:
        with fused_attention(model):
            model(t)[0, -1].sum().backward()
    finally:
        model.reset_hooks()
        handle.remove()
        model.zero_grad(set_to_none=True)
    assert len(grads) == 1 and grads[0][-2:] == (t.shape[1], t.shape[1]) and pre == [1]


def test_a_global_module_hook_sees_the_pattern_inside_the_block(model):
    seen = []
    handle = register_module_forward_hook(lambda mod, i, o: seen.append(getattr(mod, "name", "")))
    try:
        with fused_attention(model):
            model(tokens_of(model, 1))
    finally:
        handle.remove()
    assert "blocks.0.attn.hook_pattern" in seen and "blocks.1.attn.hook_pattern" in seen


def test_a_hook_added_midway_is_honoured(model):
    t = tokens_of(model, 1)
    _, cache = model.run_with_cache(t, names_filter="blocks.1.attn.hook_pattern")
    with fused_attention(model):
        model(t)
        got = []
        model.blocks[1].attn.hook_pattern.add_hook(lambda p, hook: got.append(p.detach()))
        try:
            model(t)
        finally:
            model.reset_hooks()
    assert len(got) == 1  # the hook fired: layer 1 ran the bridge's attention, on layer 0's fused output
    torch.testing.assert_close(got[0], cache["blocks.1.attn.hook_pattern"], rtol=1e-5, atol=1e-6)


def test_train_mode_keeps_attention_dropout(tiny_model):
    """The tiny GPT-2 has attention dropout 0.1: in train mode the block runs it, as the bridge does."""
    t = tokens_of(tiny_model, 2)
    tiny_model.train()
    try:
        torch.manual_seed(0)
        bridge = tiny_model(t)
        with fused_attention(tiny_model):
            torch.manual_seed(0)
            fused = tiny_model(t)
            torch.manual_seed(1)
            other = tiny_model(t)
    finally:
        tiny_model.eval()
    torch.testing.assert_close(fused, bridge)
    assert not torch.allclose(fused, other)  # dropout did run


def test_generation_with_a_kv_cache_matches_the_bridge(model):
    t = model.to_tokens("def main():\n    ")
    plain = model.generate(t, max_new_tokens=6, do_sample=False, use_past_kv_cache=True, verbose=False)
    with fused_attention(model):
        fused = model.generate(t, max_new_tokens=6, do_sample=False, use_past_kv_cache=True, verbose=False)
    assert torch.equal(fused, plain)


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_a_fast_path_that_disagrees_is_refused_at_entry(which, tiny_model_dir, llama_dir, monkeypatch):
    from attnsae.models import fast_attention
    from attnsae.models import load_model

    model = load_model(tiny_model_dir if which == "gpt2" else llama_dir)  # its own object: verdicts are per model
    t = tokens_of(model, 1)
    clean = model(t)
    real = fast_attention.F.scaled_dot_product_attention
    monkeypatch.setattr(fast_attention.F, "scaled_dot_product_attention", lambda *a, **k: 2 * real(*a, **k))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with fused_attention(model) as n:
            got = model(t)
    assert n == 0 and any("disagrees" in str(w.message) for w in caught)
    assert torch.equal(got, clean)


def test_the_mask_verdict_tells_causal_from_padded_and_sees_an_edit_in_place():
    from attnsae.models.fused_rotary import mask_verdict

    lo = torch.finfo(torch.float32).min
    causal = torch.full((5, 5), lo).triu(1)[None, None]
    assert mask_verdict(causal) == (True, True)
    assert mask_verdict(causal) == (True, True)  # judged once, the same answer
    causal[..., 3, 0] = lo  # padding at position 0 as seen from 3: no longer the plain causal mask
    assert mask_verdict(causal) == (True, False)
    padded = causal.clone()
    padded[..., 1, :] = lo  # a fully masked row: the bridge's own handling of it
    assert mask_verdict(padded) == (False, False)
