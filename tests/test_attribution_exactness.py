"""Exactness of DFA and RDFA: every decomposition sums back to what it explains.

Models: the reference model, random GPT-2s (LayerNorm, biases; one with a single head) and random Llamas (RMSNorm,
rotary, grouped-query attention; with and without biases). Shapes: a batch, batch 1, prompt length 1.
"""

from __future__ import annotations

import json

import pytest
import torch

from attnsae.attribution import attn_activations, dfa, dfa_from_activations, dfa_reference, rdfa
from attnsae.models.hooks import kv_of_head
from attnsae.errors import AttnsaeError
from attnsae.models import load_model
from conftest import assert_tree_closes, make_gpt2_dir, make_llama_dir, random_sae, random_tokens


MODELS = ["reference", "gpt2", "gpt2_one_head", "llama_gqa", "llama_mqa_bias"]


@pytest.fixture(scope="module")
def models(ref_model, tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("attr_models")
    return {
        "reference": ref_model,
        "gpt2": tiny_model,
        "gpt2_one_head": load_model(make_gpt2_dir(root / "one_head", n_head=1, n_embd=16)),
        "llama_gqa": load_model(make_llama_dir(root / "llama")),
        "llama_mqa_bias": load_model(make_llama_dir(root / "llama_bias", n_heads=4, n_kv_heads=1, bias=True)),
    }


SHAPES = [(3, 10), (1, 7), (1, 1)]


@pytest.mark.parametrize("name", MODELS)
def test_hook_z_is_pattern_times_v(models, name):
    m = models[name]
    acts = attn_activations(m, random_tokens(2, 6), m.cfg.n_layers - 1)
    B, S, H, G, dh = acts.shape
    z = torch.einsum("bhts,bshd->bthd", acts.pattern, acts.v[:, :, kv_of_head(H, G)])
    torch.testing.assert_close(z, acts.z, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dfa_sums_to_feature_preactivation(models, name, shape):
    m = models[name]
    layer = m.cfg.n_layers - 1
    sae = random_sae(m, layer)
    r = dfa(m, sae, random_tokens(*shape), features=list(range(sae.cfg.d_sae)), keep_src_head=True)
    B, S = shape
    assert len(r) == B * S * sae.cfg.d_sae
    scale = r.by_src.abs().sum(-1) + r.bias.abs() + 1e-6
    # by source, by head and by (source, head) each sum to w_i·z_cat; plus the bias it is the pre-activation
    assert ((r.by_src.sum(-1) + r.bias - r.pre_act).abs() / scale).max() < 1e-4  # fp32: the pre-activation is a 256-term matmul summed in another order
    assert ((r.by_head.sum(-1) + r.bias - r.pre_act).abs() / scale).max() < 1e-4
    torch.testing.assert_close(r.by_src_head.sum(-1), r.by_src, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r.by_src_head.sum(-2), r.by_head, rtol=1e-5, atol=1e-6)
    # w_i·z_cat computed straight from hook_z
    acts = attn_activations(m, random_tokens(*shape), layer)
    wz = acts.z.reshape(B * S, -1) @ sae.W_enc.detach()
    torch.testing.assert_close(r.total, wz[r.batch * S + r.dest, r.feature], rtol=1e-4, atol=1e-5)
    # causal: nothing comes from the future
    assert (r.by_src[torch.arange(S)[None] > r.dest[:, None]] == 0).all()


@pytest.mark.parametrize("name", ["reference", "llama_gqa", "llama_mqa_bias"])
def test_dfa_matches_naive_reference(models, name):
    m = models[name]
    sae = random_sae(m, 1, apply_b_dec_to_input=False)
    acts = attn_activations(m, random_tokens(2, 9), 1)
    by_src, by_head = dfa_reference(acts, sae)
    r = dfa_from_activations(acts, sae, keep_src_head=True)  # all active features
    assert 0 < len(r) < 2 * 9 * sae.cfg.d_sae
    assert (r.act > 0).all()
    torch.testing.assert_close(r.by_src, by_src[r.batch, r.dest, :, r.feature], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r.by_head, by_head[r.batch, r.dest, :, r.feature], rtol=1e-4, atol=1e-5)
    # (source, head) against the fully materialised [batch, dest, src, head, d_sae] product
    B, S, H, G, dh = acts.shape
    full = torch.einsum("bhts,bshd,hdf->btshf", acts.pattern, acts.v[:, :, kv_of_head(H, G)],
                        sae.W_enc.detach().view(H, dh, -1))
    torch.testing.assert_close(r.by_src_head, full[r.batch, r.dest, :, :, r.feature], rtol=1e-4, atol=1e-5)
    assert (r.bias == sae.b_enc.detach()[r.feature]).all()


def test_dfa_all_active_lists_exactly_the_firing_features(models):
    m = models["reference"]
    sae = random_sae(m, 0, architecture="topk", k=5)
    tokens = random_tokens(2, 8)
    r = dfa(m, sae, tokens, lengths=torch.tensor([8, 5]))
    acts = sae.encode(attn_activations(m, tokens, 0).z.reshape(16, -1)).detach()
    firing = {(i // 8, i % 8, int(f)) for i, f in acts.nonzero().tolist() if i % 8 < (8 if i < 8 else 5)}
    assert set(zip(r.batch.tolist(), r.dest.tolist(), r.feature.tolist())) == firing
    assert (r.act == r.pre_act).all()


def test_dfa_of_prompt_strings_skips_padding(models):
    m = models["reference"]
    sae = random_sae(m, 1)
    r = dfa(m, sae, ["def f(x):", "import os\nimport sys\n"], features=3)
    assert r.dest[r.batch == 0].max() < r.dest[r.batch == 1].max()
    assert set(r.feature.tolist()) == {3}
    d = json.loads(json.dumps(r.to_dict()))
    assert len(d["by_src"]) == len(r) and d["hook_name"] == "blocks.1.attn.hook_z"


def test_library_refuses_bad_inputs_with_one_clear_error(models):
    m = models["reference"]
    sae = random_sae(m, 1, d_sae=48)
    with pytest.raises(AttnsaeError, match="longer than the model's context of 256 tokens"):
        dfa(m, sae, random_tokens(1, 257))
    with pytest.raises(AttnsaeError, match="feature 48 is out of range"):
        dfa(m, sae, random_tokens(1, 4), features=[0, 48])
    with pytest.raises(AttnsaeError, match="before 1, not layer 1"):
        rdfa(m, sae, random_tokens(1, 4)[0], 0, upstream_saes=[random_sae(m, 1)])
    with pytest.raises(AttnsaeError, match="trained on model"):
        dfa(models["gpt2"], random_sae(m, 1), random_tokens(1, 4))


# ----------------------------------------------------------------------------------------------- RDFA


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("pos", [9, 1])
def test_rdfa_children_and_remainders_sum_to_every_node(models, name, pos):
    m = models[name]
    up, top = random_sae(m, 0, seed=1), random_sae(m, 1, seed=2)
    tokens = random_tokens(1, pos, seed=3)[0]
    for centre in (True, False):
        res = rdfa(m, top, tokens, feature=4, depth=2, top_k=3, upstream_saes=[up], centre_components=centre)
        assert assert_tree_closes(res) >= 1 + min(3, pos * m.cfg.n_heads)
        root = res.root
        z = attn_activations(m, tokens[None], 1).z.reshape(pos, -1)
        pre = float(top.pre_acts(z).detach()[res.position, 4])
        assert root.value == pytest.approx(pre, rel=1e-5, abs=1e-6)
        assert sum(res.by_src) + root.remainders["blocks.1.attn.sae.bias"] == pytest.approx(pre, rel=1e-4, abs=1e-5)
    assert {n.kind for n in res.root.walk()} == {"feature", "head_source", "component"}
    # depth 2 reaches upstream features and decomposes their head-source terms again
    deep = [n for n in res.root.walk() if n.kind == "head_source" and n.layer == 0 and n.children]
    assert deep
    json.dumps(res.to_dict())


def test_rdfa_without_upstream_sae_keeps_attention_whole_and_names_the_norm_terms(models):
    m = models["reference"]
    res = rdfa(m, random_sae(m, 1), random_tokens(1, 6)[0], feature=0, position=5, depth=1, top_k=2)
    assert_tree_closes(res)
    hs = res.root.children[0]
    names = {c.name for c in hs.children}
    assert {"hook_embed", "hook_pos_embed", "blocks.0.hook_attn_out", "blocks.0.hook_mlp_out"} == names
    assert {"blocks.1.ln1.b", "blocks.1.attn.b_V"} <= set(hs.remainders)
    assert res.root.remainders.keys() == {"other_sources_heads", "blocks.1.attn.sae.bias"}


def test_rdfa_rms_model_has_no_norm_bias_and_no_position_embedding(models):
    m = models["llama_gqa"]
    res = rdfa(m, random_sae(m, 1), random_tokens(1, 6)[0], feature=0, depth=1, top_k=2,
               upstream_saes=[random_sae(m, 0)])
    assert_tree_closes(res)
    hs = res.root.children[0]
    assert "hook_pos_embed" not in {c.name for c in hs.children}
    assert not any("ln1" in k or "b_V" in k for k in hs.remainders)


def test_rdfa_depth_zero_lists_only_the_roots_terms(models):
    m = models["gpt2"]
    res = rdfa(m, random_sae(m, 1), random_tokens(1, 5)[0], feature=1, depth=0, top_k=4)
    assert_tree_closes(res)
    assert all(not c.children for c in res.root.children) and len(res.root.children) == 4
