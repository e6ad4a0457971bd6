"""The SAE module: config validation, init, shapes, activations, the JumpReLU estimator, decoder constraint."""

from __future__ import annotations

import pytest
import torch

from attnsae.errors import AttnsaeError
from attnsae.sae.model import SAE, JumpReLU, SAEConfig, SAEOutput

D_IN, D_SAE, K = 8, 32, 4


def make_sae(architecture: str = "relu", seed: int = 0, **kw) -> SAE:
    torch.manual_seed(seed)
    k = K if architecture == "topk" else None
    return SAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture=architecture, k=k, **kw))


# ------------------------------------------------------------------------------------------------ config


def test_config_rejects_unknown_architecture_and_lists_valid_ones() -> None:
    with pytest.raises(AttnsaeError, match="relu, topk, jumprelu"):
        SAEConfig(d_in=4, d_sae=8, architecture="gated")


def test_config_topk_requires_k() -> None:
    with pytest.raises(AttnsaeError, match="needs k"):
        SAEConfig(d_in=4, d_sae=8, architecture="topk")


@pytest.mark.parametrize("kw", [dict(d_in=0, d_sae=8), dict(d_in=4, d_sae=0), dict(d_in=4, d_sae=8, k=9)])
def test_config_rejects_bad_sizes(kw: dict) -> None:
    with pytest.raises(AttnsaeError):
        SAEConfig(**kw)


def test_config_dict_roundtrip_keeps_unknown_keys_in_extra() -> None:
    cfg = SAEConfig(d_in=4, d_sae=8, architecture="topk", k=2, hook_name="blocks.1.attn.hook_z", layer=1)
    assert SAEConfig.from_dict(cfg.to_dict()) == cfg
    loaded = SAEConfig.from_dict({**cfg.to_dict(), "l1_coeff": 1.8})
    assert loaded.extra == {"l1_coeff": 1.8}


# ------------------------------------------------------------------------------------------------ init


@pytest.mark.parametrize("architecture", ["relu", "topk", "jumprelu"])
def test_decoder_rows_are_unit_norm_and_biases_zero_after_init(architecture: str) -> None:
    sae = make_sae(architecture)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(D_SAE))
    assert not sae.b_enc.any() and not sae.b_dec.any()
    assert sae.W_enc.shape == (D_IN, D_SAE) and sae.W_dec.shape == (D_SAE, D_IN)
    assert sae.dtype == torch.float32 and sae.device.type == "cpu"


def test_jumprelu_threshold_starts_at_init_threshold() -> None:
    sae = make_sae("jumprelu", jumprelu_init_threshold=0.05)
    torch.testing.assert_close(sae.threshold, torch.full((D_SAE,), 0.05))
    assert not hasattr(make_sae("relu"), "threshold")


# ------------------------------------------------------------------------------------------------ forward


@pytest.mark.parametrize("architecture", ["relu", "topk", "jumprelu"])
@pytest.mark.parametrize("lead", [(), (1,), (5,), (2, 3)])
def test_forward_shapes_for_any_leading_dims(architecture: str, lead: tuple[int, ...]) -> None:
    sae = make_sae(architecture)
    x = torch.randn(*lead, D_IN)
    out = sae(x)
    assert isinstance(out, SAEOutput)
    assert out.x_hat.shape == (*lead, D_IN)
    assert out.feature_acts.shape == out.pre_acts.shape == (*lead, D_SAE)
    assert sae.encode(x).shape == (*lead, D_SAE) and sae.decode(out.feature_acts).shape == (*lead, D_IN)


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_pre_acts_subtract_b_dec_only_when_configured(apply_b_dec: bool) -> None:
    sae = make_sae(apply_b_dec_to_input=apply_b_dec)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    x = torch.randn(3, D_IN)
    centred = x - sae.b_dec if apply_b_dec else x
    torch.testing.assert_close(sae.pre_acts(x), centred @ sae.W_enc + sae.b_enc)


@pytest.mark.parametrize("architecture", ["relu", "topk", "jumprelu"])
def test_forward_matches_encode_then_decode(architecture: str) -> None:
    sae = make_sae(architecture)
    x = torch.randn(6, D_IN)
    out = sae(x)
    assert torch.equal(out.feature_acts, sae.encode(x))
    torch.testing.assert_close(out.x_hat, sae.decode(sae.encode(x)))


def test_relu_features_are_relu_of_pre_acts() -> None:
    sae = make_sae("relu")
    x = torch.randn(4, D_IN)
    assert torch.equal(sae.encode(x), torch.relu(sae.pre_acts(x)))


def test_topk_keeps_exactly_k_latents() -> None:
    sae = make_sae("topk")
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # every pre-activation positive, so exactly k survive
    x = torch.randn(2, 3, D_IN)
    f, pre = sae.encode(x), sae.pre_acts(x)
    assert ((f != 0).sum(-1) == K).all()
    kept = pre.topk(K, dim=-1).indices
    assert torch.equal(f.gather(-1, kept), pre.gather(-1, kept))


def test_topk_drops_negative_pre_acts() -> None:
    sae = make_sae("topk")
    with torch.no_grad():
        sae.b_enc.fill_(-100.0)  # every pre-activation negative: top-k of ReLU is all zeros
    f = sae.encode(torch.randn(5, D_IN))
    assert not f.any()


def test_topk_forward_decodes_sparsely_as_the_dense_reference_in_value_and_gradient() -> None:
    """SAE.forward decodes a TopK SAE through the one sparse decoder (kernels.SparseDecode), k rows per token."""
    sae = make_sae("topk")
    x = torch.randn(2, 5, D_IN)
    values, indices = sae._topk(sae.pre_acts(x))
    dense_f = torch.zeros(2, 5, D_SAE).scatter(-1, indices, values)
    fast = sae(x).x_hat
    ref = sae.decode(dense_f)
    torch.testing.assert_close(fast, ref)
    g = torch.randn_like(ref)
    grads_fast = torch.autograd.grad((fast * g).sum(), [sae.W_dec, sae.W_enc, sae.b_dec], retain_graph=True)
    grads_ref = torch.autograd.grad((ref * g).sum(), [sae.W_dec, sae.W_enc, sae.b_dec])
    for a, b in zip(grads_fast, grads_ref):
        torch.testing.assert_close(a, b)


def test_jumprelu_zeroes_pre_acts_at_or_below_threshold() -> None:
    sae = make_sae("jumprelu", jumprelu_init_threshold=0.3)
    x = torch.randn(50, D_IN)
    pre, f = sae.pre_acts(x), sae.encode(x)
    assert torch.equal(f, torch.where(pre > 0.3, pre, torch.zeros_like(pre)))


def test_jumprelu_ste_gives_nonzero_threshold_grad() -> None:
    # Function level: the rectangle pseudo-derivative, summed over tokens.
    threshold = torch.tensor([0.5, 0.5], requires_grad=True)
    pre = torch.tensor([[0.5004, 2.0], [0.4997, 0.1]], requires_grad=True)
    JumpReLU.apply(pre, threshold, 1e-3).sum().backward()
    torch.testing.assert_close(threshold.grad, torch.tensor([-(0.5 / 1e-3) * 2, 0.0]))
    assert torch.equal(pre.grad, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    # Module level: a pre-activation within the bandwidth of the threshold moves log_threshold.
    sae = make_sae("jumprelu")
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.copy_(sae.threshold + 1e-4)
    sae(torch.randn(3, D_IN)).feature_acts.sum().backward()
    assert sae.log_threshold.grad is not None and (sae.log_threshold.grad < 0).all()


def test_set_threshold_reproduces_saved_thresholds_exactly() -> None:
    sae = make_sae("jumprelu")
    t = torch.exp(torch.linspace(-12, 4, D_SAE))  # what save_sae writes: exp of a float32 log_threshold
    sae.set_threshold(t)
    assert torch.equal(sae.threshold, t)
    foreign = t * 1.0001  # thresholds from elsewhere: nearest reachable, within a few float32 ulps
    sae.set_threshold(foreign)
    torch.testing.assert_close(sae.threshold.detach(), foreign, rtol=1e-6, atol=0)
    with pytest.raises(AttnsaeError):
        sae.set_threshold(-t)


# ------------------------------------------------------------------------------------------------ decoder constraint


def test_decoder_gradient_projection_removes_parallel_component() -> None:
    sae = make_sae()
    sae.W_dec.grad = torch.randn(D_SAE, D_IN)
    before = sae.W_dec.grad.clone()
    sae.remove_gradient_parallel_to_decoder_directions()
    after = sae.W_dec.grad
    torch.testing.assert_close((after * sae.W_dec).sum(-1), torch.zeros(D_SAE), atol=1e-6, rtol=0)
    # Only the parallel part went: what was removed is a multiple of each row.
    removed = before - after
    coeff = (removed * sae.W_dec).sum(-1, keepdim=True)
    torch.testing.assert_close(removed, coeff * sae.W_dec)


def test_set_decoder_norm_to_unit_norm_normalises_rows_only() -> None:
    sae = make_sae()
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(D_SAE, 1) * 5 + 0.1)
    direction = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)
    sae.set_decoder_norm_to_unit_norm()
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(D_SAE))
    torch.testing.assert_close(sae.W_dec.detach(), direction.detach())
