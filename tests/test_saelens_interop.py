"""attnsae's files in sae-lens 6 (issue 29): SAELens loads every architecture attnsae saves and encodes as attnsae
does; BatchTopK and Matryoshka train the same loss and threshold in both and their files go both ways. Skipped where
sae-lens is not installed (the venv of benchmarks/vs_saelens.py has it: run this file with its python). sae-lens is
imported here, at collection: its import runs ``git``, which a unit test may not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnsae.sae.formats import load_sae, save_sae
from attnsae.training.config import SAESpec
from attnsae.training.losses import sae_loss
from attnsae.sae import ARCHITECTURES
from attnsae.sae.model import SAE, SAEConfig

sae_lens = pytest.importorskip("sae_lens")
from sae_lens.saes.sae import TrainStepInput  # noqa: E402

D_IN, D_SAE = 8, 16


def make_sae(architecture: str) -> SAE:
    """A random SAE of ``architecture`` on blocks.3.attn.hook_z with biases and thresholds that matter."""
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture=architecture, hook_name="blocks.3.attn.hook_z",
                        k=3 if architecture in ("topk", "batchtopk", "matryoshka") else None,
                        matryoshka_widths=[4, 10, D_SAE] if architecture == "matryoshka" else None))
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
        if architecture == "jumprelu":
            sae.log_threshold.normal_(-1.0, 0.5)
        if architecture in ("batchtopk", "matryoshka"):
            sae.topk_threshold.fill_(0.3)
    return sae


def test_saelens_loads_every_architecture_and_encodes_and_decodes_as_attnsae(tmp_path: Path) -> None:
    """sae-lens (6.x) reads each saved folder, BatchTopK and Matryoshka as the JumpReLU SAEs SAELens itself saves them
    as, and its encode on ``hook_z``-shaped input gives attnsae's activations bit for bit."""
    expected = {"relu": "StandardSAE", "topk": "TopKSAE", "jumprelu": "JumpReLUSAE", "batchtopk": "JumpReLUSAE",
                "matryoshka": "JumpReLUSAE"}
    for architecture in ARCHITECTURES:
        sae = make_sae(architecture)
        theirs = sae_lens.SAE.load_from_disk(str(save_sae(sae, tmp_path / architecture)))
        assert type(theirs).__name__ == expected[architecture]
        z = torch.randn(6, 2, D_IN // 2)  # [tokens, n_heads, d_head]: SAELens reshapes hook_z itself
        with torch.no_grad():
            ours, f = sae.encode(z.reshape(6, D_IN)), theirs.encode(z)
            assert 0 < int((ours > 0).sum()) < ours.numel(), architecture
            assert torch.equal(f, ours), architecture
            torch.testing.assert_close(theirs.decode(f).reshape(6, D_IN), sae.decode(ours))


@pytest.mark.parametrize("architecture", ["batchtopk", "matryoshka"])
def test_saelens_and_attnsae_train_the_same_threshold_and_loss_and_read_each_others_files(tmp_path: Path,
                                                                                         architecture: str) -> None:
    """On the same weights and batches: SAELens' training SAE and attnsae give the same loss (Matryoshka: its prefix
    losses added) and the same moving-average threshold; the inference SAE SAELens saves loads in attnsae and
    encodes as attnsae's own SAE does."""
    sae = make_sae(architecture)
    with torch.no_grad():
        sae.topk_threshold.zero_()
    kw = dict(d_in=D_IN, d_sae=D_SAE, k=3, rescale_acts_by_decoder_norm=False, topk_threshold_lr=0.2)
    if architecture == "batchtopk":
        theirs = sae_lens.BatchTopKTrainingSAE(sae_lens.BatchTopKTrainingSAEConfig(**kw))
    else:
        theirs = sae_lens.MatryoshkaBatchTopKTrainingSAE(sae_lens.MatryoshkaBatchTopKTrainingSAEConfig(
            **kw, matryoshka_widths=list(sae.cfg.matryoshka_widths)))
    sae.cfg.topk_threshold_lr = 0.2
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(theirs, name).copy_(getattr(sae, name))
    spec = SAESpec(layer=3, architecture=architecture, d_sae=D_SAE, k=3)
    for i in range(4):
        x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(i))
        out = theirs.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None,
                                                          n_training_steps=i, is_logging_step=False))
        ours = sae_loss(sae, spec, x, None)
        sae.update_topk_threshold(ours.min_act)
        torch.testing.assert_close(ours.loss, out.loss)
        assert float(sae.topk_threshold) == pytest.approx(float(theirs.topk_threshold), rel=1e-6)
    theirs.save_inference_model(tmp_path / "theirs")
    loaded = load_sae(tmp_path / "theirs")
    assert loaded.cfg.architecture == "jumprelu"  # what SAELens saved; it encodes as our batchtopk SAE does
    x = torch.randn(50, D_IN)
    with torch.no_grad():
        sae.topk_threshold.fill_(float(theirs.topk_threshold))
        assert torch.equal(loaded.encode(x), sae.encode(x))
