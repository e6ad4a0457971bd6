import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from attnsae.sae import kernels
from attnsae.errors import AttnsaeError
from attnsae.sae.model import SAE, SAEConfig
from attnsae.training.trainer import SAESpec, TrainConfig, Trainer, resample_dead, sae_loss
from conftest import assert_one_line_error, run_cli


class RandomSource:
    """Gaussian activations with a few strong directions; batch i is a function of (seed, i)."""

    def __init__(self, d_in=16, batch_size=64, layers=(0,), nan_at=None):
        self.d_in, self.batch_size, self.layers, self.nan_at = d_in, batch_size, list(layers), nan_at

    def batches(self, start=0):
        i = start
        while True:
            g = torch.Generator().manual_seed(i)
            x = torch.randn(self.batch_size, self.d_in, generator=g)
            x[:, 0] *= 5
            if self.nan_at is not None and i == self.nan_at:
                x[3, 2] = float("nan")
            yield {l: x for l in self.layers}
            i += 1


def test_relu_loss_is_the_papers():
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=8, d_sae=32))
    x = torch.randn(10, 8)
    out = sae_loss(sae, SAESpec(layer=0, l1_coeff=0.7), x, None, 1.0)
    x_hat, f, _ = sae(x)
    expected = (x - x_hat).pow(2).sum(-1).mean() + 0.7 * f.abs().sum(-1).mean()
    torch.testing.assert_close(out.loss, expected)


def test_sparse_topk_kernel_matches_dense_reference():
    torch.manual_seed(0)
    for d_in, d_sae, k in ((16, 64, 4), (32, 5000, 8)):  # both backward paths of SparseDecode
        ps = [torch.randn(d_in, d_sae), torch.randn(d_sae), torch.randn(d_sae, d_in), torch.randn(d_in)]
        ps = [p.requires_grad_() for p in ps]
        x, g = torch.randn(33, d_in), torch.randn(33, d_in)
        grads = []
        for fn in (kernels.topk_forward, kernels.dense_reference):
            for p in ps:
                p.grad = None
            out = fn(x, *ps, k)[0]
            out.backward(g)
            grads.append((out.detach(), [p.grad.clone() for p in ps]))
        (a, ga), (b, gb) = grads
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
        for u, v in zip(ga, gb):
            torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-3)


def test_topk_loss_same_with_and_without_kernel():
    torch.manual_seed(1)
    sae = SAE(SAEConfig(d_in=16, d_sae=64, architecture="topk", k=4))
    x = torch.randn(20, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:20] = True
    a = sae_loss(sae, SAESpec(layer=0, architecture="topk", k=4, d_sae=64), x, dead, 1.0, sparse_kernel=True)
    b = sae_loss(sae, SAESpec(layer=0, architecture="topk", k=4, d_sae=64), x, dead, 1.0, sparse_kernel=False)
    torch.testing.assert_close(a.loss, b.loss)
    assert torch.equal(a.fired, b.fired)


def test_training_reduces_loss_and_keeps_decoder_unit_norm(tmp_path):
    cfg = TrainConfig(total_tokens=64 * 150, batch_size=64, lr=3e-3, warmup_steps=10, log_every=10,
                      ckpt_every=1000, resample_every=10**9)
    specs = [SAESpec(layer=0, d_sae=32, l1_coeff=0.05), SAESpec(layer=0, d_sae=32, l1_coeff=0.5)]
    tr = Trainer(specs, RandomSource(), cfg, tmp_path, progress=False)
    saes = tr.fit()
    recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for name in (s.name for s in specs):
        mine = [r for r in recs if r["sae"] == name]
        assert mine[-1]["loss"] < 0.5 * mine[0]["loss"]
        assert {"mse", "l1", "l0", "explained_variance", "dead_frac", "lr", "tokens_per_s"} <= set(mine[-1])
    l0 = [r["l0"] for r in recs if r["step"] == 150]
    assert l0[0] > l0[1]  # more L1, sparser
    for sae in saes:
        torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(32))
    assert (tmp_path / specs[0].name / "cfg.json").exists()
    assert len(json.loads((tmp_path / specs[0].name / "feature_frequency.json").read_text())) == 32


def test_resampling_follows_anthropic_recipe():
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=8, d_sae=16))
    opt = torch.optim.Adam(sae.parameters())
    sae(torch.randn(4, 8)).x_hat.sum().backward()
    opt.step()
    dead = torch.zeros(16, dtype=torch.bool)
    dead[[2, 5]] = True
    inputs = torch.randn(50, 8)
    live_norm = sae.W_enc[:, ~dead].norm(dim=0).mean()
    n = resample_dead(sae, opt, dead, inputs, torch.Generator().manual_seed(0))
    assert n == 2
    for i in (2, 5):
        d = sae.W_dec[i]
        cand = inputs - sae.b_dec
        cand = cand / cand.norm(dim=-1, keepdim=True)
        assert (cand - d).abs().max(-1).values.min() < 1e-6  # one of the inputs' directions
        torch.testing.assert_close(sae.W_enc[:, i], d * live_norm * 0.2)
        assert sae.b_enc[i] == 0
        assert opt.state[sae.W_dec]["exp_avg"][i].abs().sum() == 0
        assert opt.state[sae.W_enc]["exp_avg_sq"][:, i].abs().sum() == 0
    assert opt.state[sae.W_dec]["exp_avg"][0].abs().sum() > 0


def test_lr_warms_up_from_tenth_and_rewarms_after_resample():
    cfg = TrainConfig(total_tokens=4096 * 100, warmup_steps=10, resample_every=40, resample_times=4)
    assert cfg.resample_steps() == [40, 80]
    assert cfg.lr_factor(0) == pytest.approx(0.1)
    assert cfg.lr_factor(10) == 1.0 and cfg.lr_factor(39) == 1.0
    assert cfg.lr_factor(40) == pytest.approx(0.1) and cfg.lr_factor(50) == 1.0


def test_non_finite_activations_stop_with_the_step(tmp_path):
    cfg = TrainConfig(total_tokens=64 * 20, batch_size=64, log_every=5, ckpt_every=5)
    tr = Trainer([SAESpec(layer=0, d_sae=32)], RandomSource(nan_at=7), cfg, tmp_path, progress=False)
    with pytest.raises(AttnsaeError, match="non-finite activations at step 7"):
        tr.fit()
    assert not (tmp_path / SAESpec(layer=0, d_sae=32).name).exists()


def test_in_process_resume_is_exact_for_topk_with_auxk(tmp_path):
    spec = [SAESpec(layer=0, architecture="topk", d_sae=64, k=3)]
    cfg = TrainConfig(total_tokens=64 * 40, batch_size=64, log_every=5, ckpt_every=15, dead_window=5)
    full = Trainer(spec, RandomSource(), cfg, tmp_path / "a", progress=False).fit()[0]
    part = Trainer(spec, RandomSource(), TrainConfig(**{**cfg.__dict__, "total_tokens": 64 * 15}), tmp_path / "b",
                   progress=False)
    part.fit()
    resumed = Trainer(spec, RandomSource(), cfg, tmp_path / "b", progress=False).fit(resume=True)[0]
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


TRAIN_ARGS = ["train", "--layers", "0", "1", "--architecture", "relu", "--l1-coeffs", "0.5", "2", "--d-sae", "64",
              "--batch-size", "128", "--total-tokens", str(128 * 120), "--context-size", "32",
              "--buffer-size", "1024", "--max-corpus-tokens", "30000", "--ckpt-every", "10", "--log-every", "10",
              "--resample-every", "50", "--resample-window", "20", "--resample-batches", "4", "--warmup-steps",
              "20", "--threads", "1", "--no-progress"]


def test_kill_and_resume_gives_identical_weights(tiny_model_dir, tmp_path):
    """A real SIGKILL of a training subprocess, then --resume: same weights as an uninterrupted run."""
    args = TRAIN_ARGS + ["--model", tiny_model_dir]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    ref = subprocess.run([sys.executable, "-m", "attnsae", *args, "--out", str(tmp_path / "a")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    out_b = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "attnsae", *args, "--out", str(out_b)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once a checkpoint past the first resample exists
        m = out_b / "metrics.jsonl"
        if m.exists() and any(json.loads(l)["step"] >= 70 for l in m.read_text().splitlines() if l.strip()):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ckpt = torch.load(out_b / "checkpoint.pt", weights_only=False)
    assert 0 < ckpt["state"]["step"] < 120
    res = subprocess.run([sys.executable, "-m", "attnsae", *args, "--out", str(out_b), "--resume"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    names = sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_dir())
    assert len(names) == 4
    for n in names:
        a = load_file(tmp_path / "a" / n / "sae_weights.safetensors")
        b = load_file(out_b / n / "sae_weights.safetensors")
        for k in a:
            assert torch.equal(a[k], b[k]), (n, k)
    la = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    lb = (out_b / "metrics.jsonl").read_text().splitlines()
    strip = lambda ls: [{k: v for k, v in json.loads(l).items() if k != "tokens_per_s"} for l in ls]
    assert strip(la) == strip(lb)


def test_train_bad_inputs_are_one_line_errors(tiny_model_dir, tmp_path):
    base = ["train", "--model", tiny_model_dir, "--out", str(tmp_path / "o"), "--no-progress", "--context-size", "32"]
    assert_one_line_error(run_cli(*base, "--architecture", "gated"), "unknown architecture")
    assert_one_line_error(run_cli(*base, "--layers", "7"), "unknown layer 7")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "checkpoint.pt").write_bytes(b"PK\x03\x04garbage")
    assert_one_line_error(run_cli(*base, "--resume", "--max-corpus-tokens", "5000", "--context-size", "32",
                                  "--batch-size", "64", "--buffer-size", "512"), "corrupt or truncated checkpoint")


def test_config_file_sets_settings_and_flags_override(tmp_path):
    from attnsae.cli import build_parser
    from attnsae.cli_train import run_config_from_args

    (tmp_path / "c.yaml").write_text("layers: [0, 1]\nl1_coeffs: [1.5]\nlr: 0.0005\nlr_schedule: cosine\n")
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "c.yaml"), "--lr", "0.002"])
    cfg = run_config_from_args(args)
    assert cfg.layers == [0, 1] and cfg.l1_coeffs == [1.5] and cfg.train.lr_schedule == "cosine"
    assert cfg.train.lr == 0.002
    (tmp_path / "bad.yaml").write_text("layerz: [0]\n")
    with pytest.raises(AttnsaeError, match="unknown config key"):
        run_config_from_args(build_parser().parse_args(["train", "--config", str(tmp_path / "bad.yaml")]))


def test_training_from_a_cache_of_another_model_is_refused(tiny_model_dir, tmp_path):
    from conftest import make_gpt2_dir

    common = ["--context-size", "32", "--max-corpus-tokens", "4000", "--no-progress", "--layers", "0"]
    proc = run_cli("cache", "--model", tiny_model_dir, "--cache-out", str(tmp_path / "cache"), *common)
    assert proc.returncode == 0, proc.stderr
    wide = make_gpt2_dir(tmp_path / "wide", n_embd=64, n_head=4)
    proc = run_cli("train", "--model", wide, "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "o"), *common)
    assert_one_line_error(proc, "activation cache is for model")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").glob("layer*"))
