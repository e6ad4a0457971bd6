import pytest
import torch

from attnsae.activations import harvest_z
from attnsae.errors import AttnsaeError
from attnsae.evals.splice import ablate_z, mean_z, splice_saes
from attnsae.models import load_model
from attnsae.sae.checks import check_sae, same_model
from conftest import random_sae, random_tokens, sharp_gpt2_dir, zero_sae

HEADS = (1, 4, 8)  # n_embd 32: d_head 32, 8, 4


@pytest.fixture(scope="module", params=HEADS, ids=lambda h: f"{h}heads")
def model(request, tmp_path_factory):
    return load_model(sharp_gpt2_dir(tmp_path_factory.mktemp(f"h{request.param}") / "gpt2", request.param))


def d_in(model) -> int:
    return model.cfg.n_heads * model.cfg.d_head


def run_with_z(model, tokens, layer, fn):
    """Logits with hook_z of ``layer`` replaced by ``fn(z_cat [batch, pos, d_in])``, written out by hand."""

    def hook(z, hook):
        return fn(z.reshape(*z.shape[:2], -1)).reshape(z.shape)

    return model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])


@torch.no_grad()
def test_splicing_with_error_reproduces_clean_logits(model):
    """With the error term, unedited features give back the clean run, also on the path that really decodes (an
    edit or an observer forces it), for SAEs that reconstruct z badly: the error term carries most of z."""
    tokens = random_tokens()
    saes = [random_sae(d_in(model), 0, seed=1), random_sae(d_in(model), 1, seed=2, architecture="topk")]
    clean = model(tokens)
    z = harvest_z(model, tokens, [0, 1])
    for l, sae in zip((0, 1), saes):
        assert (z[l] - sae(z[l]).x_hat).norm() > 0.5 * z[l].norm()  # a bad reconstruction: the error term matters
    with splice_saes(model, saes):
        gap = float((model(tokens) - clean).abs().max())
    tol = dict(rtol=0, atol=1e-4 * float(clean.abs().max()))
    assert gap > 1000 * tol["atol"]  # without the error term the logits move far beyond the tolerance below
    # an edit with the error term moves z by exactly the edited features' decoder rows, computed here by hand
    sae1 = saes[1]
    f1 = sae1(z[1]).feature_acts  # [batch*pos, d_sae]
    j = int(f1.count_nonzero(0).argmax())  # the feature active on most tokens
    assert (f1[:, j] != 0).sum() > 0.3 * len(f1)
    expected = run_with_z(model, tokens, 1, lambda zc: zc - sae1(zc).feature_acts[..., j, None] * sae1.W_dec[j])

    def drop_j(layer, f):
        return f if layer == 0 else torch.cat([f[..., :j], torch.zeros_like(f[..., j:j + 1]), f[..., j + 1:]], -1)

    with splice_saes(model, saes, with_error=True, edit=drop_j):
        dropped = model(tokens)
    torch.testing.assert_close(dropped, expected, **tol)
    assert float((dropped - clean).abs().max()) > 100 * tol["atol"]  # the edit changed the logits

    calls = []

    def same_features(layer, f):
        calls.append(layer)
        return f * 1.0  # a new tensor holding the same features: decode(f) + (z - decode(f))

    for keep_bos in (False, True):
        calls.clear()
        with splice_saes(model, saes, with_error=True, edit=same_features, keep_bos=keep_bos):
            torch.testing.assert_close(model(tokens), clean, **tol)
        assert calls == [0, 1]  # the decode path ran at both layers
    seen = {}
    with splice_saes(model, saes, with_error=True, observe=lambda l, x, out: seen.setdefault(l, out)):
        torch.testing.assert_close(model(tokens), clean, **tol)
    assert sorted(seen) == [0, 1] and all(not torch.equal(o.x_hat, z[l].view_as(o.x_hat)) for l, o in seen.items())


@torch.no_grad()
def test_splicing_without_error_writes_the_reconstruction_into_hook_z(model):
    tokens = random_tokens()
    sae = random_sae(d_in(model), 1)
    expected = run_with_z(model, tokens, 1, lambda z: sae(z).x_hat)
    with splice_saes(model, {1: sae}):
        torch.testing.assert_close(model(tokens), expected)
    clean = model(tokens)
    with splice_saes(model, [sae], keep_bos=True):
        kept = model(tokens)
    expected = run_with_z(model, tokens, 1, lambda z: torch.cat([z[:, :1], sae(z).x_hat[:, 1:]], 1))
    torch.testing.assert_close(kept, expected)
    torch.testing.assert_close(kept[:, 0], clean[:, 0])  # position 0 sees only itself


@torch.no_grad()
def test_edit_keeps_the_error_term_of_the_unedited_features(model):
    tokens = random_tokens()
    sae = random_sae(d_in(model), 0)
    seen = []

    def ablate_feature_3(layer, f):
        seen.append((layer, tuple(f.shape)))
        f = f.clone()
        f[..., 3] = 0
        return f

    with splice_saes(model, [sae], with_error=True, edit=ablate_feature_3):
        edited = model(tokens)
    assert seen == [(0, (tokens.shape[0], tokens.shape[1], sae.d_sae))]

    def by_hand(z):
        f = sae.encode(z)
        return z - f[..., 3:4] * sae.W_dec[3]  # z + decode(f') - decode(f)

    torch.testing.assert_close(edited, run_with_z(model, tokens, 0, by_hand), rtol=1e-5, atol=1e-5)
    with splice_saes(model, [sae], edit=lambda layer, f: torch.zeros_like(f)):  # no error term: b_dec only
        torch.testing.assert_close(model(tokens), run_with_z(model, tokens, 0, lambda z: sae.b_dec.expand_as(z)))


@torch.no_grad()
def test_observe_sees_every_position_of_every_spliced_layer(model):
    tokens = random_tokens()
    saes = [random_sae(d_in(model), 0), random_sae(d_in(model), 1)]
    z = harvest_z(model, tokens, [0, 1])
    got = {}
    with splice_saes(model, saes, with_error=True, observe=lambda l, x, out: got.setdefault(l, (x, out))):
        model(tokens)
    for l, sae in zip((0, 1), saes):
        x, out = got[l]
        torch.testing.assert_close(x.reshape(-1, sae.d_in), z[l])
        torch.testing.assert_close(out.feature_acts, sae.encode(x))


@torch.no_grad()
def test_zero_and_mean_ablation_replace_hook_z(model):
    tokens = random_tokens()
    with ablate_z(model, [1]):
        torch.testing.assert_close(model(tokens), run_with_z(model, tokens, 1, torch.zeros_like))
    means = mean_z(model, tokens, [0, 1], batch_size=4, keep_bos=True)
    z = harvest_z(model, tokens, [0], drop_bos=True)[0]
    torch.testing.assert_close(means[0], z.double().mean(0))
    with ablate_z(model, {0: means[0]}, keep_bos=True):
        ablated = model(tokens)
    mu = means[0].float()
    expected = run_with_z(model, tokens, 0, lambda z: torch.cat([z[:, :1], mu.expand_as(z[:, 1:])], 1))
    torch.testing.assert_close(ablated, expected)


def test_hooks_are_removed_after_the_block_even_on_error(model):
    tokens = random_tokens()
    with torch.no_grad():
        clean = model(tokens)
        with pytest.raises(RuntimeError):
            with splice_saes(model, [zero_sae(d_in(model), 0)]):
                raise RuntimeError("boom")
        assert torch.equal(model(tokens), clean)


def test_saes_that_do_not_fit_the_model_are_refused(model):
    n = d_in(model)
    with pytest.raises(AttnsaeError, match="d_in"):
        check_sae(model, random_sae(n + 4, 0))
    with pytest.raises(AttnsaeError, match=r"reads layer 2, but the model has layers 0\.\.1"):
        check_sae(model, random_sae(n, 2))
    resid = random_sae(n, 0)
    resid.cfg.hook_name = "blocks.0.hook_resid_pre"
    with pytest.raises(AttnsaeError, match="hook_z"):
        check_sae(model, resid)
    with pytest.raises(AttnsaeError, match="trained on blocks.0"):
        check_sae(model, random_sae(n, 0), layer=1)
    other = random_sae(n, 0)
    other.cfg.model_name = "pythia-70m"  # the one fit check also refuses an SAE of another model
    with pytest.raises(AttnsaeError, match="trained on model 'pythia-70m'"):
        check_sae(model, other)
    with pytest.raises(AttnsaeError, match="two SAEs for layer 0"):
        with splice_saes(model, [random_sae(n, 0), random_sae(n, 0)]):
            pass
    with pytest.raises(AttnsaeError, match="out of range"):
        with ablate_z(model, [5]):
            pass


def test_same_model_knows_aliases_and_hub_prefixes():
    assert same_model("gpt2-small", "gpt2") and same_model("openai-community/gpt2", "gpt2")
    assert not same_model("gpt2", "pythia-70m")
