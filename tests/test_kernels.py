"""The sparse training kernels (issue 25 §3): valid CSR under PyTorch's own invariant check, float64 gradchecks of the
custom autograd functions, a batch with no active latent, ``apply_b_dec_to_input=False``, and a warnings filter that
stays inside the kernels."""

from __future__ import annotations

import warnings

import pytest
import torch

from attnsae.sae import kernels
from attnsae.sae.model import SAE, SAEConfig
from attnsae.training.config import SAESpec
from conftest import loss_both_ways


@pytest.fixture
def checked(monkeypatch):
    """PyTorch checks every sparse tensor the kernels build (sorted columns, indices in range)."""
    monkeypatch.setattr(kernels, "CHECK_INVARIANTS", True)


def params(d_in: int, d_sae: int, dtype=torch.float32, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ps = [torch.randn(d_in, d_sae, generator=g), torch.randn(d_sae, generator=g), torch.randn(d_sae, d_in, generator=g),
          torch.randn(d_in, generator=g)]
    return [p.to(dtype).requires_grad_() for p in ps]


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu"])
def test_every_sparse_matrix_is_valid_csr_under_pytorchs_check(arch, checked):
    torch.manual_seed(0)
    W_enc, b_enc, W_dec, b_dec = params(16, 300)
    x = torch.randn(40, 16)
    if arch == "topk":
        out = kernels.topk_forward(x, W_enc, b_enc, W_dec, b_dec, 7)
    else:
        with torch.no_grad():
            b_enc -= ((x - b_dec) @ W_enc).quantile(0.99)  # about 1% active: the sparse path
        out = kernels.relu_forward(x, W_enc, b_enc, W_dec, b_dec) if arch == "relu" else kernels.jumprelu_forward(
            x, W_enc, b_enc, W_dec, b_dec, torch.full((300,), 0.01, requires_grad=True), 0.1)
    assert out.at is not None
    (out.x_hat.pow(2).sum() + out.acts.sum()).backward()
    assert all(p.grad is not None for p in (W_enc, b_enc, W_dec))


def test_the_saes_topk_forward_and_auxks_decoder_build_valid_csr(checked):
    sae = SAE(SAEConfig(d_in=16, d_sae=200, architecture="topk", k=9))
    x = torch.randn(30, 16)
    sae(x).x_hat.sum().backward()
    pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).detach()
    idx = pre.topk(5, dim=-1, sorted=False).indices  # unsorted, as AuxK's top-k of the dead latents
    kernels.latents_forward(x - sae.b_dec, sae.W_enc, sae.b_enc, sae.W_dec, idx, pre).sum().backward()


def test_gather_pre_and_sparse_decode_pass_float64_gradcheck(checked):
    torch.manual_seed(1)
    B, d_in, d_sae = 5, 4, 11
    mask = torch.rand(B, d_sae) < 0.3
    mask[2] = False  # a row with no active entry
    at = kernels.Active.of_mask(mask)
    xc = torch.randn(B, d_in, dtype=torch.float64, requires_grad=True)
    W_enc, b_enc, W_dec, _ = params(d_in, d_sae, torch.float64)

    def gather(xc, W_enc, b_enc):
        return kernels.GatherPre.apply(xc, W_enc, b_enc, at, (xc @ W_enc + b_enc).detach())

    assert torch.autograd.gradcheck(gather, (xc, W_enc, b_enc))
    acts = torch.randn(len(at.cols), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, W: kernels.SparseDecode.apply(at, a, W), (acts, W_dec))


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_a_batch_with_no_active_latent_gives_the_dense_losses_and_gradients(arch, checked):
    """Every latent off (and, for JumpReLU, out of the estimator's window): the sparse path over zero entries."""
    sae = SAE(SAEConfig(d_in=8, d_sae=64, architecture=arch, jumprelu_init_threshold=0.05, jumprelu_bandwidth=0.1))
    with torch.no_grad():
        sae.b_enc.fill_(-100.0)
    x = torch.randn(12, 8)
    spec = SAESpec(layer=0, architecture=arch, d_sae=64, l1_coeff=0.3, l0_coeff=0.2)
    (a, ga), (b, gb) = loss_both_ways(sae, spec, x)
    assert float(a.l0) == 0 and not a.fired.any()
    torch.testing.assert_close(a.loss, b.loss)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v)


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu"])
def test_without_b_dec_on_the_input_the_kernels_give_the_dense_losses_and_gradients(arch, checked):
    torch.manual_seed(3)
    cfg = SAEConfig(d_in=16, d_sae=400, architecture=arch, k=6 if arch == "topk" else None,
                    apply_b_dec_to_input=False, jumprelu_init_threshold=0.05, jumprelu_bandwidth=0.1)
    sae = SAE(cfg)
    x = torch.randn(30, 16)
    with torch.no_grad():
        sae.b_dec.normal_()  # a b_dec that matters, were it subtracted
        if arch != "topk":
            sae.b_enc.fill_(-float((x @ sae.W_enc).quantile(0.995)))
    spec = SAESpec(layer=0, architecture=arch, d_sae=400, k=cfg.k, l1_coeff=0.3, l0_coeff=0.2)
    (a, ga), (b, gb) = loss_both_ways(sae, spec, x)
    torch.testing.assert_close(a.x_hat, b.x_hat, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-5)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)


def test_the_csr_beta_warning_is_silenced_inside_the_kernels_only():
    assert not any(f[1] is not None and "Sparse CSR" in f[1].pattern for f in warnings.filters)
    W_enc, b_enc, W_dec, b_dec = params(8, 50)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kernels.topk_forward(torch.randn(6, 8), W_enc, b_enc, W_dec, b_dec, 3).x_hat.sum().backward()
    assert not [w for w in caught if "Sparse CSR" in str(w.message)]
