"""On a CUDA device (skipped without one): the sparse kernels and a whole training run give what the CPU gives."""

from dataclasses import replace

import pytest
import torch

from attnsae.sae.model import SAE, SAEConfig
from attnsae.training.config import SAESpec
from attnsae.training.losses import sae_loss
from attnsae.training.trainer import fit
from dist_runs import RUNS, LayerSource

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu", "batchtopk", "matryoshka"])
def test_the_sparse_kernels_on_cuda_give_the_cpu_losses_and_gradients(arch, monkeypatch):
    from attnsae.sae import kernels

    monkeypatch.setattr(kernels, "CHECK_INVARIANTS", True)  # cuSPARSE may assume sorted columns: PyTorch checks
    torch.manual_seed(0)
    k = 16 if arch in ("topk", "batchtopk", "matryoshka") else None
    widths = [256, 1024, 4096] if arch == "matryoshka" else None
    sae = SAE(SAEConfig(d_in=64, d_sae=4096, architecture=arch, k=k, matryoshka_widths=widths))
    x = torch.randn(512, 64)
    with torch.no_grad():  # about 16 of 4096 latents fire per token
        sae.b_enc.fill_(-float(((x - sae.b_dec) @ sae.W_enc).quantile(1 - 16 / 4096)))
        if k and arch != "topk":  # a batch's top 16 x 512: 16 latents, every level's, far above the rest, so that
            sae.b_enc[torch.arange(16) * 256 + 7] += 100.0  # CUDA's rounding cannot swap an entry at the edge
    spec = SAESpec(layer=0, architecture=arch, d_sae=4096, k=k, matryoshka_widths=widths)
    runs = []
    for device in ("cpu", "cuda"):
        s = SAE(sae.cfg).to(device)
        s.load_state_dict(sae.state_dict())
        out = sae_loss(s, spec, x.to(device), None)
        out.loss.backward()
        runs.append((out.loss.item(), out.fired.cpu(), [p.grad.cpu() for p in s.parameters()]))
    (la, fa, ga), (lb, fb, gb) = runs
    assert la == pytest.approx(lb, rel=1e-4) and torch.equal(fa, fb)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-3, atol=1e-4)


def test_a_run_on_cuda_trains_the_saes_of_the_cpu(tmp_path):
    cfg = RUNS["topk"]
    specs = cfg.specs(LayerSource.D_IN)
    cpu = fit(cfg, specs, LayerSource(cfg.layers, cfg.batch_size), tmp_path / "cpu")
    gpu = fit(replace(cfg, device="cuda"), specs, LayerSource(cfg.layers, cfg.batch_size), tmp_path / "cuda")
    for a, b in zip(cpu, gpu):
        assert b.device.type == "cuda"
        for k, v in a.state_dict().items():
            torch.testing.assert_close(v, b.state_dict()[k].cpu(), rtol=1e-3, atol=1e-4)


def test_fused_attention_on_cuda_gives_the_bridges_hook_z(ref_model):
    from attnsae.activations import harvest_z
    from attnsae.models.fast_attention import fused_attention

    model = ref_model.to("cuda")
    try:
        tokens = model.to_tokens("import os\nfor i in range(10):\n    print(os.path.join('a', str(i)))\n")
        _, cache = model.run_with_cache(tokens)
        with fused_attention(model) as n:
            assert n == model.cfg.n_layers
            z = harvest_z(model, tokens, [1])[1]
        torch.testing.assert_close(z, cache["blocks.1.attn.hook_z"].reshape(-1, z.shape[-1]), rtol=1e-4, atol=1e-4)
    finally:
        ref_model.to("cpu")
