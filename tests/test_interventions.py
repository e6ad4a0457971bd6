"""Interventions on hook_z (attnsae.evals.interventions): each edit against the same intervention written by hand
with a TransformerLens hook, no-op edits against the clean run, patches against the other prompt's hook_z, greedy
generation against the model's own, the refusals, and a model left without hooks after an error. On random
2-layer GPT-2s with 1 and 4 heads (weights scaled up so that edits move the logits), batch 1."""

from __future__ import annotations

import pytest
import torch

from attnsae.errors import AttnsaeError
from attnsae.models.fast_attention import fused_attention
from attnsae.evals.interventions import Edit, check_edits, feature_changes, generate, run_edited
from attnsae.models import load_model
from conftest import random_sae, random_tokens, sharp_gpt2_dir

S = 12  # prompt length (BOS included)


@pytest.fixture(scope="module", params=(1, 4), ids=lambda h: f"{h}heads")
def model(request, tmp_path_factory):
    return load_model(sharp_gpt2_dir(tmp_path_factory.mktemp(f"iv{request.param}") / "gpt2", request.param))


@pytest.fixture(scope="module")
def saes(model):
    d_in = model.cfg.n_heads * model.cfg.d_head
    return {0: random_sae(d_in, 0, d_sae=48, seed=1, architecture="topk", k=6), 1: random_sae(d_in, 1, seed=2)}


@pytest.fixture(scope="module")
def prompts():
    """Prompt A and prompt B of the same length, and a longer B: int64 [S], [S], [S + 3]."""
    t = random_tokens(3, S + 3, seed=5)
    return t[0, :S], t[1, :S], t[2]


def hook_z(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


@torch.no_grad()
def by_hand(model, tokens, layer: int, fn) -> torch.Tensor:
    """Logits [S, d_vocab] with hook_z of ``layer`` replaced by ``fn(z [pos, n_heads, d_head])`` (batch 1)."""
    def hook(z, hook):
        return fn(z[0].clone())[None]

    with fused_attention(model):  # as run_edited and the explorer's clean capture run the model
        return model.run_with_hooks(tokens[None], fwd_hooks=[(hook_z(layer), hook)])[0]


@torch.no_grad()
def clean(model, tokens) -> torch.Tensor:
    with fused_attention(model):
        return model(tokens[None])[0]


@torch.no_grad()
def z_of(model, tokens, layer: int) -> torch.Tensor:
    """hook_z of ``layer`` on ``tokens``: [pos, n_heads, d_head]."""
    with fused_attention(model):
        _, cache = model.run_with_cache(tokens[None], names_filter=[hook_z(layer)])
    return cache[hook_z(layer)][0]


def close(a, b, scale) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * float(scale.abs().max()))


def moved(a, b) -> bool:
    return float((a - b).abs().max()) > 1e-2 * float(b.abs().max())


def n_hooks(model) -> int:
    return sum(len(hp.fwd_hooks) for hp in model.hook_dict.values())


@torch.no_grad()
def test_zeroing_every_active_feature_takes_out_the_reconstruction_but_its_bias(model, saes, prompts):
    """With the error term kept, zeroing all of layer 0's active features leaves hook_z = z − f·W_dec, i.e. the
    error term plus b_dec: the SAE's reconstruction taken out (written here by hand)."""
    a = prompts[0]
    sae = saes[0]
    f = sae.encode(z_of(model, a, 0).flatten(1))  # [S, d_sae]
    active = f.abs().sum(0).nonzero()[:, 0].tolist()
    assert len(active) > 6
    run = run_edited(model, saes, a, [Edit(0, feature=j) for j in active])
    expected = by_hand(model, a, 0, lambda z: (z.flatten(1) - sae.encode(z.flatten(1)) @ sae.W_dec).reshape(z.shape))
    close(run.logits, expected, expected)
    assert moved(run.logits, clean(model, a))
    assert torch.equal(run.feature_acts[0], f)  # the SAE's own reading of hook_z, before its edits


@torch.no_grad()
def test_edits_that_change_nothing_give_the_clean_logits(model, saes, prompts):
    """Scale 1 and set-to-own-value, on features and heads, at a position and everywhere: logits within 1e-5 of the
    clean run (they are the same numbers: the error term keeps z exactly where the features did not change)."""
    a = prompts[0]
    f = saes[1].encode(z_of(model, a, 1).flatten(1))
    t = 5
    j = int((f[t] > 0).nonzero()[0, 0])
    edits = [Edit(0, feature=3, op="scale", value=1.0), Edit(1, feature=j, position=t, op="set", value=float(f[t, j])),
             Edit(1, head=model.cfg.n_heads - 1, op="scale", value=1.0), Edit(0, head=0, position=2, op="scale",
                                                                             value=1.0)]
    run = run_edited(model, saes, a, edits)
    torch.testing.assert_close(run.logits, clean(model, a).float(), rtol=0, atol=1e-5)


def test_a_head_scaled_by_zero_is_transformer_lens_own_ablation_of_it(model, saes, prompts):
    a = prompts[0]
    h = model.cfg.n_heads - 1

    def zero(z, position=slice(None)):
        z[position, h] = 0
        return z

    for layer, position in ((0, None), (1, 4)):  # an SAE at both layers: the head edit comes first, then the SAE
        run = run_edited(model, saes, a, [Edit(layer, head=h, position=position, op="scale", value=0.0)])
        expected = by_hand(model, a, layer, lambda z: zero(z, slice(None) if position is None else position))
        close(run.logits, expected, expected)
        assert moved(run.logits, clean(model, a))
    # at a layer without an SAE, the zero op, with a set op on another target at once
    only0 = {0: saes[0]}
    run = run_edited(model, only0, a, [Edit(1, head=h, op="zero"), Edit(0, feature=2, op="set", value=0.0)])
    zeroed = run_edited(model, only0, a, [Edit(0, feature=2, op="zero")])
    with torch.no_grad(), model.hooks(fwd_hooks=[(hook_z(1), lambda z, hook: zero(z[0].clone())[None])]):
        both = run_edited(model, only0, a, [Edit(0, feature=2, op="zero")])
    close(run.logits, both.logits, both.logits)
    assert moved(run.logits, zeroed.logits)


@torch.no_grad()
def test_patching_a_head_or_a_layer_from_prompt_b_runs_with_b_s_hook_z(model, saes, prompts):
    a, b, _ = prompts
    zb = z_of(model, b, 1)  # [S, n_heads, d_head]
    h = model.cfg.n_heads - 1

    def put(z, heads):
        z[:, heads] = zb[:, heads]
        return z

    run = run_edited(model, saes, a, [Edit(1, head=h, op="patch")], source_tokens=b)
    close(run.logits, by_hand(model, a, 1, lambda z: put(z, h)), run.logits)
    assert moved(run.logits, clean(model, a))
    every = run_edited(model, saes, a, [Edit(1, head=i, op="patch") for i in range(model.cfg.n_heads)],
                       source_tokens=b)
    close(every.logits, by_hand(model, a, 1, lambda z: zb.clone()), every.logits)
    # every feature of layer 1 patched: B's reconstruction with A's error term, z_A − x̂_A + x̂_B
    sae = saes[1]
    feats = run_edited(model, saes, a, [Edit(1, feature=j, op="patch") for j in range(sae.cfg.d_sae)],
                       source_tokens=b)
    xb = sae(zb.flatten(1)).x_hat
    expected = by_hand(model, a, 1, lambda z: (z.flatten(1) - sae(z.flatten(1)).x_hat + xb).reshape(z.shape))
    close(feats.logits, expected, expected)


def test_prompts_of_different_lengths_patch_only_named_positions(model, saes, prompts):
    a, _, longer = prompts
    h = 0
    with pytest.raises(AttnsaeError, match="differ in length"):
        run_edited(model, saes, a, [Edit(1, head=h, op="patch")], source_tokens=longer)
    with pytest.raises(AttnsaeError, match="differ in length"):
        run_edited(model, saes, a, [Edit(1, head=h, position=3, op="patch")], source_tokens=longer)
    zb = z_of(model, longer, 1)
    run = run_edited(model, saes, a, [Edit(1, head=h, position=3, op="patch", from_position=S + 1)],
                     source_tokens=longer)
    assert run.edits[0].from_position == S + 1

    def put(z):
        z[3, h] = zb[S + 1, h]
        return z

    close(run.logits, by_hand(model, a, 1, put), run.logits)
    same_length = run_edited(model, saes, a, [Edit(1, head=h, position=3, op="patch")], source_tokens=prompts[1])
    assert same_length.edits[0].from_position == 3


def test_generation_without_edits_is_the_model_s_own_greedy_continuation(model, prompts):
    a = prompts[0]
    ours = generate(model, a, 8)
    theirs = model.generate(a[None], max_new_tokens=8, do_sample=False, stop_at_eos=False, verbose=False,
                            use_past_kv_cache=False)[0, S:]
    assert ours.tolist() == theirs.tolist()


def test_an_edit_at_every_position_reaches_the_generated_tokens(model, saes, prompts):
    """Zero a head everywhere: each step equals TransformerLens's ablation of that head over the whole sequence,
    generated tokens included; at one position, only that prompt token is ablated at each step."""
    a = prompts[0]

    def greedy(position):
        def hook(z, hook):
            z = z.clone()
            z[:, position, 0] = 0
            return z

        seq = a.clone()
        with torch.no_grad(), model.hooks(fwd_hooks=[(hook_z(0), hook)]):
            for _ in range(8):
                seq = torch.cat([seq, model(seq[None])[0, -1].argmax().reshape(1)])
        return seq[S:].tolist()

    everywhere = generate(model, a, 8, saes, [Edit(0, head=0, op="zero")])
    assert everywhere.tolist() == greedy(slice(None))
    at2 = generate(model, a, 8, saes, [Edit(0, head=0, position=2, op="zero")])
    assert at2.tolist() == greedy(2)
    assert n_hooks(model) == 0


def test_bad_edits_are_one_line_refusals(model, saes, prompts):
    a, b, _ = prompts
    H = model.cfg.n_heads
    bad = {
        "layer 5 has no SAE": [Edit(5, feature=0)],
        "layer 9 is out of range": [Edit(9, head=0)],
        f"head {H} is out of range": [Edit(0, head=H)],
        "feature 48 is out of range": [Edit(0, feature=48)],
        f"position {S} is out of range": [Edit(0, feature=1, position=S)],
        "both a feature and a head": [Edit(0, feature=1, head=0)],
        "neither": [Edit(0)],
        "needs a finite value": [Edit(0, head=0, op="scale")],
        "value is for scale and set only": [Edit(0, head=0, op="zero", value=2.0)],
        "op must be one of": [Edit(0, head=0, op="mean")],
        "from_position is for patch only": [Edit(0, head=0, position=1, from_position=2)],
        "no prompt B was given": [Edit(0, head=0, op="patch")],
        "overlap at every position": [Edit(0, head=0, position=3), Edit(0, head=0, op="scale", value=2.0)],
        "overlap at position 3": [Edit(0, feature=1, position=3), Edit(0, feature=1, position=3, op="set", value=1)],
    }
    for needle, edits in bad.items():
        with pytest.raises(AttnsaeError, match=needle) as e:
            check_edits(model, saes, edits, S)
        assert "\n" not in str(e.value)
    with pytest.raises(AttnsaeError, match="from_position needs a position"):
        check_edits(model, saes, [Edit(0, head=0, op="patch", from_position=1)], S, S)
    with pytest.raises(AttnsaeError, match="prompt B has positions"):
        check_edits(model, saes, [Edit(0, head=0, position=1, op="patch", from_position=S)], S, S)
    with pytest.raises(AttnsaeError, match="reads at most"):
        generate(model, a, 100)
    # the same target at two different positions is fine
    assert len(check_edits(model, saes, [Edit(0, head=0, position=1), Edit(0, head=0, position=2)], S)) == 2


def test_a_failed_run_leaves_the_model_without_hooks(model, saes, prompts, monkeypatch):
    a, b, _ = prompts
    sae = saes[1]

    def broken(x):
        raise RuntimeError("an SAE that fails mid-forward")

    monkeypatch.setattr(sae, "forward", broken)
    with pytest.raises(RuntimeError, match="mid-forward"):
        run_edited(model, saes, a, [Edit(0, head=0, op="zero"), Edit(1, feature=0, op="patch")], source_tokens=b)
    with pytest.raises(RuntimeError, match="mid-forward"):
        generate(model, a, 3, saes, [Edit(1, feature=0)])
    monkeypatch.undo()
    assert n_hooks(model) == 0
    torch.testing.assert_close(run_edited(model, saes, a, []).logits, clean(model, a).float(), rtol=0, atol=0)


def test_feature_changes_leave_out_float_rounding_and_rank_by_size():
    before = {0: torch.tensor([[1.0, 0.0], [2.0, 3.0]])}
    after = {0: torch.tensor([[1.0 + 1e-7, 0.5], [2.0, 1.0]])}
    changes, tol = feature_changes(before, after, k=5, rel_tol=1e-5)
    assert tol == {0: pytest.approx(3e-5)}
    assert [(c["position"], c["feature"], c["delta"]) for c in changes] == [(1, 1, -2.0), (0, 1, 0.5)]


def test_generation_stops_at_its_time_limit_with_at_least_one_token(model, saes, prompts):
    from attnsae.serve.session import PromptSession

    a = prompts[0]
    assert len(generate(model, a, 5, max_seconds=0.0)) == 1
    assert len(generate(model, a, 5, max_seconds=60.0)) == 5
    session = PromptSession(model, saes, model.tokenizer.decode(a[1:].tolist()))
    out = session.generate([Edit(1, head=0)], n=6, max_seconds=0.0)
    assert out["n"] == 1 and out["asked"] == 6 and "time limit" in out["stopped"]
    assert len(out["clean"]["tokens"]) == len(out["edited"]["tokens"]) == 1
    full = session.generate([Edit(1, head=0)], n=6)
    assert full["n"] == 6 and full["stopped"] is None
