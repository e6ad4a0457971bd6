"""Weight-based head attribution and the direct logit effect, against their definitions."""

from __future__ import annotations

import json

import pytest
import torch

from attnsae.attribution import head_attribution, logit_effect, logit_effect_vector
from attnsae.errors import AttnsaeError
from attnsae.models import model_name
from attnsae.sae.model import SAE, SAEConfig


def make_sae(model, layer=1, d_sae=64) -> SAE:
    torch.manual_seed(0)
    c = model.cfg
    return SAE(SAEConfig(d_in=c.n_heads * c.d_head, d_sae=d_sae, hook_name=f"blocks.{layer}.attn.hook_z",
                         model_name=model_name(model)))


def test_head_shares_are_decoder_chunk_norms_over_their_sum(ref_model):
    sae = make_sae(ref_model)
    with torch.no_grad():
        sae.W_dec[5] = 0.0  # a dead row gets zero shares, not NaN
        sae.W_dec[7] = 0.0
        sae.W_dec[7, 3 * 32:4 * 32] = 1.0  # lives entirely in head 3
    ha = head_attribution(sae, n_heads=8, k=4)
    norms = sae.W_dec.detach().view(64, 8, 32).norm(dim=-1)
    expected = norms / norms.sum(-1, keepdim=True)
    live = torch.arange(64) != 5
    torch.testing.assert_close(ha.shares[live], expected[live])
    assert (ha.shares[5] == 0).all()
    torch.testing.assert_close(ha.shares[live].sum(-1), torch.ones(63))
    assert ha.shares[7, 3] == 1 and ha.top_features[3, 0] == 7
    assert ha.top_features.shape == (8, 4)
    assert (ha.top_shares[:, :-1] >= ha.top_shares[:, 1:]).all()
    assert torch.equal(ha.top_shares, ha.shares.gather(0, ha.top_features.T).T)
    json.dumps(ha.to_dict())
    with pytest.raises(AttnsaeError, match="split"):
        head_attribution(sae, n_heads=7)


def test_logit_effect_is_decoder_row_through_W_O_and_W_U(ref_model):
    sae = make_sae(ref_model)
    d = sae.W_dec.detach()[3]
    expected = d @ ref_model.W_O[1].detach().reshape(256, 256) @ ref_model.W_U.detach()
    torch.testing.assert_close(logit_effect_vector(ref_model, sae, 3), expected, rtol=1e-4, atol=1e-5)
    eff = logit_effect(ref_model, sae, 3, k=5)
    assert eff.top_tokens == expected.topk(5).indices.tolist()
    assert eff.bottom_tokens == expected.topk(5, largest=False).indices.tolist()
    assert eff.top_values[0] >= eff.top_values[-1] > eff.bottom_values[-1] >= eff.bottom_values[0]
    json.dumps(eff.to_dict())
    # through the frozen final LayerNorm: centred, times γ
    g = ref_model.ln_final._original_component.weight.detach()
    through = logit_effect_vector(ref_model, sae, 3, through_ln_final=True)
    direction = d @ ref_model.W_O[1].detach().reshape(256, 256)
    torch.testing.assert_close(through, ((direction - direction.mean()) * g) @ ref_model.W_U.detach(),
                               rtol=1e-4, atol=1e-5)


def test_logit_effect_refuses_a_feature_out_of_range(ref_model):
    with pytest.raises(AttnsaeError, match="feature 64 is out of range"):
        logit_effect(ref_model, make_sae(ref_model), 64)
