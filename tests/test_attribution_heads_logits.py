"""Weight-based head attribution and the direct logit effect, against their definitions."""

from __future__ import annotations

import json

import pytest
import torch

from attnsae.attribution import head_attribution, logit_effect, logit_effect_matrix
from attnsae.errors import AttnsaeError
from attnsae.models import model_name
from attnsae.sae.model import SAE, SAEConfig


def make_sae(model, layer=1, d_sae=64) -> SAE:
    torch.manual_seed(0)
    c = model.cfg
    return SAE(SAEConfig(d_in=c.n_heads * c.d_head, d_sae=d_sae, hook_name=f"blocks.{layer}.attn.hook_z",
                         model_name=model_name(model)))


def test_head_shares_locate_each_feature_in_the_heads_it_writes(ref_model):
    """Head attribution against facts that do not restate its formula: a decoder row that lives in one head's slice
    of hook_z (head h = z[..., h, :], as the model lays it out) gets share 1 there; a row split over two heads with
    chunk norms 3 and 4 gets 3/7 and 4/7; shares ignore the row's scale and sign and a rotation within a head, and
    follow the heads when their chunks are swapped; an all-zero row gets no share, not NaN."""
    n_heads, d_head = ref_model.cfg.n_heads, ref_model.cfg.d_head  # 8 x 32
    sae = make_sae(ref_model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for h in range(n_heads):  # features 0..7: feature h lives in head h only, written as z [n_heads, d_head]
            z = torch.zeros(n_heads, d_head)
            z[h] = torch.randn(d_head, generator=g)
            sae.W_dec[h] = z.reshape(-1)  # the concatenation hook_z -> z_cat that the SAEs read
        sae.W_dec[8] = 0.0
        sae.W_dec[8, 1 * d_head] = 3.0  # head 1: norm 3
        sae.W_dec[8, 6 * d_head + 5] = -4.0  # head 6: norm 4
        sae.W_dec[9] = 0.0  # a dead row
    shares = head_attribution(sae, n_heads=n_heads, k=4).shares
    for h in range(n_heads):
        assert shares[h, h] == 1 and shares[h].sum() == 1
    want = torch.zeros(n_heads)
    want[1], want[6] = 3 / 7, 4 / 7
    torch.testing.assert_close(shares[8], want)
    assert not shares[9].any() and torch.isfinite(shares).all()
    live = torch.arange(64) != 9
    torch.testing.assert_close(shares[live].sum(-1), torch.ones(63))
    ha = head_attribution(sae, n_heads=n_heads, k=4)
    assert ha.top_features[:, 0].tolist() == list(range(n_heads))  # each head's top feature is the one living in it
    assert ha.top_features.shape == (n_heads, 4) and (ha.top_shares[:, :-1] >= ha.top_shares[:, 1:]).all()
    json.dumps(ha.to_dict())

    # invariances: scale and sign of a row, an orthogonal map within each head's chunk; equivariance: swapped heads
    base = shares.clone()
    q, _ = torch.linalg.qr(torch.randn(d_head, d_head, generator=g))
    perm = torch.randperm(n_heads, generator=g)
    with torch.no_grad():
        W = sae.W_dec.detach().clone()
        sae.W_dec.copy_(W * torch.linspace(-3, 5, 64)[:, None])  # scales -3 .. 5, none 0
    scaled = head_attribution(sae, n_heads=n_heads).shares
    torch.testing.assert_close(scaled, base)
    with torch.no_grad():
        sae.W_dec.copy_((W.view(64, n_heads, d_head) @ q).reshape(64, -1))
    torch.testing.assert_close(head_attribution(sae, n_heads=n_heads).shares, base)
    with torch.no_grad():
        sae.W_dec.copy_(W.view(64, n_heads, d_head)[:, perm].reshape(64, -1))  # new head k = old head perm[k]
    torch.testing.assert_close(head_attribution(sae, n_heads=n_heads).shares, base[:, perm])
    with pytest.raises(AttnsaeError, match="split"):
        head_attribution(sae, n_heads=7)


def test_logit_effect_is_decoder_row_through_W_O_the_frozen_final_norm_and_W_U(ref_model):
    """One definition: the final LayerNorm with its scale frozen (centred, times γ) between W_O and W_U."""
    sae = make_sae(ref_model)
    d = sae.W_dec.detach()[3]
    g = ref_model.ln_final._original_component.weight.detach()
    direction = d @ ref_model.W_O[1].detach().reshape(256, 256)
    expected = ((direction - direction.mean()) * g) @ ref_model.W_U.detach()
    torch.testing.assert_close(logit_effect_matrix(ref_model, sae, [3])[0], expected, rtol=1e-4, atol=1e-5)
    eff = logit_effect(ref_model, sae, 3, k=5)
    assert eff.top_tokens == expected.topk(5).indices.tolist()
    assert eff.bottom_tokens == expected.topk(5, largest=False).indices.tolist()
    assert eff.top_values[0] >= eff.top_values[-1] > eff.bottom_values[-1] >= eff.bottom_values[0]
    assert "final norm" in json.loads(json.dumps(eff.to_dict()))["definition"]


def test_logit_effect_refuses_a_feature_out_of_range(ref_model):
    with pytest.raises(AttnsaeError, match="feature 64 is out of range"):
        logit_effect(ref_model, make_sae(ref_model), 64)
