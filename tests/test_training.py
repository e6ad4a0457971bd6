import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from attnsae.errors import AttnsaeError
from attnsae.sae import kernels
from attnsae.sae.model import SAE, SAEConfig
from attnsae.training.config import SAESpec, TrainConfig
from attnsae.training.losses import sae_loss
from attnsae.training.resample import resample_dead
from attnsae.training.trainer import fit
from conftest import (assert_one_line_error, loss_both_ways, make_gpt2_dir, random_sae, run_cli, step_hook,
                      wait_until_stopped)
from dist_runs import LayerSource


def test_relu_loss_is_the_papers():
    """The paper's loss: ||x - x_hat||² + l1_coeff·Σ|f|, the L1 *not* weighted by decoder row norms. With rows of
    norm 0.2 .. 3 the weighted variant would differ by far more than rounding."""
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=8, d_sae=32))
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.2, 3.0, 32)[:, None])  # non-unit decoder rows
        sae.b_dec.normal_(0, 0.5)
        sae.b_enc.normal_(0, 0.5)
    x = torch.randn(10, 8)
    out = sae_loss(sae, SAESpec(layer=0, l1_coeff=0.7), x, None, 1.0)
    with torch.no_grad():  # by hand from the weights
        f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
        x_hat = f @ sae.W_dec + sae.b_dec
        mse = (x - x_hat).pow(2).sum(-1).mean()
        l1 = 0.7 * f.sum(-1).mean()
        weighted = 0.7 * (f * sae.W_dec.norm(dim=-1)).sum(-1).mean()
    assert (f > 0).float().mean() > 0.2 and abs(float(weighted - l1)) > 0.1 * float(l1)  # the two variants differ
    torch.testing.assert_close(out.parts["mse"], mse)
    torch.testing.assert_close(out.parts["l1"], l1)
    torch.testing.assert_close(out.loss, mse + l1)
    half = sae_loss(sae, SAESpec(layer=0, l1_coeff=0.7), x, None, 0.5)  # the L1 warm-up scales the L1 term only
    torch.testing.assert_close(half.parts["l1"], 0.5 * l1)
    torch.testing.assert_close(half.parts["mse"], mse)
    # an unweighted L1 gives the decoder no gradient: rows cannot be grown to dodge it (they are renormalised)
    out.parts["l1"].backward()
    assert sae.W_dec.grad is None or not sae.W_dec.grad.any()


def test_sparse_topk_kernel_matches_dense_reference():
    torch.manual_seed(0)
    for d_in, d_sae, k in ((16, 64, 4), (32, 5000, 8)):
        ps = [torch.randn(d_in, d_sae), torch.randn(d_sae), torch.randn(d_sae, d_in), torch.randn(d_in)]
        ps = [p.requires_grad_() for p in ps]
        x, g = torch.randn(33, d_in), torch.randn(33, d_in)
        grads = []
        for fn in (kernels.topk_forward, kernels.dense_reference):
            for p in ps:
                p.grad = None
            out = fn(x, *ps, k).x_hat
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


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_sparse_relu_and_jumprelu_paths_give_the_dense_losses_and_gradients(arch):
    """A batch with few active latents goes through the sparse kernels (over exactly the entries with a gradient): the
    same loss terms, reconstruction, firing counts and gradients as the dense SAE (for JumpReLU the
    threshold's too, from latents inside the estimator's window that do not fire); a dense batch takes the dense
    path."""
    torch.manual_seed(2)
    cfg = SAEConfig(d_in=16, d_sae=512, architecture=arch, jumprelu_init_threshold=0.05, jumprelu_bandwidth=0.1)
    sae = SAE(cfg)
    x = torch.randn(40, 16)
    with torch.no_grad():  # about 0.5% of the latents fire on a token, as in a trained SAE
        sae.b_enc.fill_(-float(((x - sae.b_dec) @ sae.W_enc).quantile(0.995)))
    spec = SAESpec(layer=0, architecture=arch, d_sae=512, l1_coeff=0.3, l0_coeff=0.2)
    forward = (lambda: kernels.relu_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)) if arch == "relu" else (
        lambda: kernels.jumprelu_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.threshold, 0.1))
    sparse = forward()
    assert sparse.at is not None and 40 <= len(sparse.acts) <= 0.05 * 40 * 512
    (a, ga), (b, gb) = loss_both_ways(sae, spec, x)
    assert a.l0 > 0 and torch.equal(a.fired, b.fired) and torch.equal(a.l0, b.l0)
    for name in b.parts:
        torch.testing.assert_close(a.parts[name], b.parts[name])
    torch.testing.assert_close(a.x_hat, b.x_hat)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)
    if arch == "jumprelu":  # latents in the window that did not fire moved the threshold
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        near = ((pre > 0) & (pre <= 0.05)).any(0)
        assert near.any() and (sae.log_threshold.grad[near & (a.fired == 0)] != 0).any()
    with torch.no_grad():
        sae.b_enc.fill_(1.0)  # most latents fire: the dense forward, the SAE's own
    x_hat, f, at, _, pre_at, _ = forward()
    assert at is None and pre_at is None and f.shape == (40, 512)
    torch.testing.assert_close(x_hat, sae(x).x_hat)
    torch.testing.assert_close(f, sae(x).feature_acts)


def test_training_reduces_loss_and_keeps_decoder_unit_norm(tmp_path):
    cfg = TrainConfig(total_tokens=64 * 150, batch_size=64, lr=3e-3, warmup_steps=10, log_every=10,
                      ckpt_every=1000, resample_every=10**9, progress=False)
    specs = [SAESpec(layer=0, d_sae=32, l1_coeff=0.05), SAESpec(layer=0, d_sae=32, l1_coeff=0.5)]
    saes = fit(cfg, specs, LayerSource(), tmp_path)
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


def test_resampling_draws_inputs_with_probability_loss_squared():
    """Anthropic's recipe: each dead feature gets the direction of an input drawn with probability ∝ loss², loss the
    input's squared reconstruction error. 5 inputs whose losses are 1, 2.25 .. 9 (no feature fires: x_hat = b_dec),
    4000 dead features: the counts fit loss² (chi-square) and reject uniform, argmax and ∝ loss sampling."""
    from attnsae.training.resample import resample_probabilities

    d_in, n_dead = 8, 4000
    c = torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0])
    for apply_b_dec in (True, False):
        torch.manual_seed(0)
        sae = SAE(SAEConfig(d_in=d_in, d_sae=n_dead, apply_b_dec_to_input=apply_b_dec))
        opt = torch.optim.Adam(sae.parameters())
        with torch.no_grad():
            sae.b_enc.fill_(-1e3)  # nothing fires: x_hat = b_dec
            sae.b_dec.copy_(torch.linspace(-1, 1, d_in))
        inputs = sae.b_dec.detach() + torch.diag(c) @ torch.eye(5, d_in)  # x_i - b_dec = c_i e_i: loss_i = c_i²
        want = c.pow(4) / c.pow(4).sum()
        with torch.no_grad():
            torch.testing.assert_close(resample_probabilities(sae, inputs), want)
        dead = torch.ones(n_dead, dtype=torch.bool)
        assert resample_dead(sae, opt, dead, inputs, torch.Generator().manual_seed(1)) == n_dead
        # which input each new decoder row came from: normalise(x - b_dec), or normalise(x) without b_dec on input
        cand = inputs - sae.b_dec.detach() if apply_b_dec else inputs
        cand = cand / cand.norm(dim=-1, keepdim=True)
        cos = sae.W_dec.detach() @ cand.T  # [n_dead, 5]
        best = cos.max(-1)
        assert (best.values > 1 - 1e-5).all()  # every row is exactly one input's direction
        counts = torch.bincount(best.indices, minlength=5).double()

        def chi2(p):
            e = n_dead * p.double()
            return float(((counts - e).pow(2) / e).sum())

        assert chi2(want) < 18.47  # df 4, p = 0.001
        assert chi2(torch.full((5,), 0.2)) > 100 and chi2(c.pow(2) / c.pow(2).sum()) > 100  # uniform, ∝ loss
        assert counts.max() < 0.7 * n_dead  # not argmax
        if not apply_b_dec:  # b_dec is not subtracted from the input: no row is x - b_dec
            other = inputs - sae.b_dec.detach()
            other = other / other.norm(dim=-1, keepdim=True)
            assert (sae.W_dec.detach() @ other.T).max() < 0.99


class _PhasedSource:
    """One-hot activations (a random scale on one of 16 axes): batches < 15 use axes 0..3, later ones axes 4..7
    with frequencies 0.5, 0.3, 0.19, 0.01. Features tuned to the early axes stop firing; some fire only rarely."""

    layers, d_in = [0], 16

    def batches(self, start=0):
        i = start
        while True:
            g = torch.Generator().manual_seed(i)
            if i < 15:
                k = torch.randint(0, 4, (64,), generator=g)
            else:
                k = 4 + torch.multinomial(torch.tensor([0.5, 0.3, 0.19, 0.01]), 64, replacement=True, generator=g)
            x = torch.zeros(64, 16)
            x[torch.arange(64), k] = 0.5 + 1.5 * torch.rand(64, generator=g)
            yield {0: x}
            i += 1


def test_resampling_follows_anthropic_recipe(tmp_path, monkeypatch):
    """Inside a real fit: resampling runs at the scheduled steps, picks exactly the features that fired at most
    dead_cutoff of the window's tokens (counted from each step's firings, window = the resample_window steps before),
    writes input directions (x itself: apply_b_dec_to_input=False), resets JumpReLU thresholds, and re-warms the lr."""
    import math

    import attnsae.training.trainer as trainer_mod
    from attnsae.training.checkpoint import TrainState

    fired: dict[str, list[torch.Tensor]] = {}
    real_loss, real_resample = trainer_mod.sae_loss, trainer_mod.resample_dead

    def recording_loss(sae, spec, x, dead, *a, **k):
        out = real_loss(sae, spec, x, dead, *a, **k)
        fired.setdefault(spec.name, []).append(out.fired.detach().clone())
        return out

    calls = []
    cfg = TrainConfig(total_tokens=64 * 100, batch_size=64, lr=1e-3, warmup_steps=10, log_every=1, ckpt_every=1000,
                      resample_every=40, resample_times=2, resample_window=20, resample_batches=4,
                      dead_cutoff=0.015, buffer_size=64, progress=False)
    specs = [SAESpec(layer=0, d_sae=64, l1_coeff=1.0, apply_b_dec_to_input=False),
             SAESpec(layer=0, d_sae=64, architecture="jumprelu", apply_b_dec_to_input=False)]

    def checking_resample(sae, opt, dead, inputs, g):
        name = specs[0].name if sae.cfg.architecture == "relu" else specs[1].name
        s = len(fired[name])  # the step about to run
        window = torch.stack(fired[name][s - cfg.resample_window:s]).sum(0)
        before = torch.stack(fired[name][:s - cfg.resample_window]).sum(0)
        assert torch.equal(dead, window.double() / (cfg.resample_window * 64) <= cfg.dead_cutoff), (name, s)
        idx = dead.nonzero()[:, 0]
        live_norm = sae.W_enc.detach()[:, ~dead].norm(dim=0).mean()
        if sae.cfg.architecture == "jumprelu":
            with torch.no_grad():
                sae.log_threshold[idx] = math.log(0.05)  # as if the thresholds had drifted
        b_dec = sae.b_dec.detach().clone()
        n = real_resample(sae, opt, dead, inputs, g)
        assert n == len(idx)
        W_dec = sae.W_dec.detach()[idx]
        # each new row is an input's own direction: one of the unit axes (x − b_dec would not be one)
        assert b_dec.norm() > 1e-3
        assert torch.allclose(W_dec.abs().max(-1).values, torch.ones(len(idx)), atol=1e-6)
        assert torch.allclose(W_dec.norm(dim=-1), torch.ones(len(idx)), atol=1e-6)
        torch.testing.assert_close(sae.W_enc.detach()[:, idx], W_dec.T * 0.2 * live_norm)
        assert not sae.b_enc.detach()[idx].any()
        assert not opt.state[sae.W_dec]["exp_avg"][idx].any() and not opt.state[sae.W_enc]["exp_avg_sq"][:, idx].any()
        assert opt.state[sae.W_dec]["exp_avg"][~dead].any()  # live features keep their Adam moments
        if sae.cfg.architecture == "jumprelu":
            torch.testing.assert_close(sae.threshold.detach()[idx], torch.full((len(idx),), 1e-3))
            assert not opt.state[sae.log_threshold]["exp_avg"][idx].any()
        calls.append({"sae": name, "step": s, "dead": dead.clone(), "window": window, "before": before})
        return n

    monkeypatch.setattr(trainer_mod, "sae_loss", recording_loss)
    monkeypatch.setattr(trainer_mod, "resample_dead", checking_resample)
    trainer_mod.fit(cfg, specs, _PhasedSource(), tmp_path)

    assert [(c["sae"], c["step"]) for c in calls] == [(specs[0].name, 40), (specs[1].name, 40),
                                                      (specs[0].name, 80), (specs[1].name, 80)]
    # the window and the cutoff both mattered: dead features that fired before the window, dead ones that fired
    # (rarely) within it, and live ones
    dead_before = any(((c["window"] == 0) & (c["before"] > 0)).any() for c in calls)
    dead_rare = any((c["dead"] & (c["window"] > 0)).any() for c in calls)
    assert dead_before and dead_rare and all(0 < c["dead"].sum() < 64 for c in calls[:2])
    state = TrainState(**torch.load(tmp_path / "checkpoint.pt", weights_only=False)["state"])
    assert [(r["sae"], r["step"], r["resampled"]) for r in state.resamples] == [
        (c["sae"], c["step"], int(c["dead"].sum())) for c in calls]
    # lr: warm-up from 0.1·lr over 10 steps, again from each resample
    lr = {r["step"] - 1: r["lr"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())}
    for s in (0, 40, 80):
        assert lr[s] == pytest.approx(1e-4) and lr[s + 5] == pytest.approx(5.5e-4)
        assert lr[s + 10] == pytest.approx(1e-3)
    assert lr[39] == pytest.approx(1e-3) and lr[79] == pytest.approx(1e-3)


def test_lr_warms_up_from_tenth_and_rewarms_after_resample():
    cfg = TrainConfig(total_tokens=4096 * 100, warmup_steps=10, resample_every=40, resample_window=40,
                      resample_times=4)
    assert cfg.resample_steps() == [40, 80]
    assert cfg.lr_factor(0) == pytest.approx(0.1)
    assert cfg.lr_factor(10) == 1.0 and cfg.lr_factor(39) == 1.0
    assert cfg.lr_factor(40) == pytest.approx(0.1) and cfg.lr_factor(50) == 1.0


def test_non_finite_activations_stop_with_the_step(tmp_path):
    cfg = TrainConfig(total_tokens=64 * 20, batch_size=64, log_every=5, ckpt_every=5, progress=False)
    with pytest.raises(AttnsaeError, match="non-finite activations at step 7"):
        fit(cfg, [SAESpec(layer=0, d_sae=32)], LayerSource(nan_at=7), tmp_path)
    assert not (tmp_path / SAESpec(layer=0, d_sae=32).name).exists()


def test_in_process_resume_is_exact_for_topk_with_auxk(tmp_path):
    spec = [SAESpec(layer=0, architecture="topk", d_sae=64, k=3)]
    cfg = TrainConfig(total_tokens=64 * 40, batch_size=64, log_every=5, ckpt_every=15, dead_window=5,
                      progress=False)
    full = fit(cfg, spec, LayerSource(), tmp_path / "a")[0]
    with pytest.raises(KeyboardInterrupt):  # stopped at step 20: the checkpoint of step 15 remains
        fit(cfg, spec, LayerSource(crash_at=20), tmp_path / "b")
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["state"]["step"] == 15
    resumed = fit(replace(cfg, resume=True), spec, LayerSource(), tmp_path / "b")[0]
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


TRAIN_ARGS = ["train", "--layers", "0", "1", "--architecture", "relu", "--l1-coeffs", "0.5", "2", "--d-sae", "64",
              "--batch-size", "128", "--total-tokens", str(128 * 120), "--context-size", "32",
              "--buffer-size", "1024", "--max-corpus-tokens", "30000", "--ckpt-every", "10", "--log-every", "10",
              "--resample-every", "50", "--resample-window", "20", "--resample-batches", "4", "--warmup-steps",
              "20", "--threads", "1", "--no-progress"]


@pytest.mark.integration
def test_kill_and_resume_gives_identical_weights(tiny_model_dir, tmp_path):
    """A real SIGKILL of a training subprocess, then --resume: same weights as an uninterrupted run."""
    args = TRAIN_ARGS + ["--model", tiny_model_dir]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    ref = subprocess.run([sys.executable, "-m", "attnsae", *args, "--out", str(tmp_path / "a")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    out_b = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "attnsae", *args, "--out", str(out_b)],
                            env=step_hook("stop", 70, env=env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_stopped(proc.pid, proc)  # it stopped itself right after the checkpoint of step 70 (past a resample)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert torch.load(out_b / "checkpoint.pt", weights_only=False)["state"]["step"] == 70
    res = subprocess.run([sys.executable, "-m", "attnsae", *args, "--out", str(out_b), "--resume"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    names = sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_dir() and p.name != "checkpoint")
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


@pytest.mark.integration
def test_train_bad_inputs_are_one_line_errors(tiny_model_dir, tmp_path):
    base = ["train", "--model", tiny_model_dir, "--out", str(tmp_path / "o"), "--no-progress", "--context-size", "32"]
    assert_one_line_error(run_cli(*base, "--architecture", "gated"), "invalid choice: 'gated'", "jumprelu")
    assert_one_line_error(run_cli(*base, "--layers", "7"), "unknown layer 7")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "checkpoint.pt").write_bytes(b"PK\x03\x04garbage")
    assert_one_line_error(run_cli(*base, "--resume", "--max-corpus-tokens", "5000", "--context-size", "32",
                                  "--batch-size", "64", "--buffer-size", "512"), "corrupt or truncated checkpoint")


def test_a_used_out_folder_needs_resume_or_overwrite(tiny_model_dir, tmp_path, capsys):
    """A fresh run into a folder that holds a run is refused before the model loads; --overwrite starts it over."""
    from attnsae.cli import main

    out = tmp_path / "o"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"an old run")
    base = ["train", "--model", tiny_model_dir, "--out", str(out), "--no-progress", "--context-size", "32",
            "--max-corpus-tokens", "5000", "--batch-size", "64", "--buffer-size", "512", "--total-tokens", "640",
            "--d-sae", "16"]

    def run(*extra: str) -> subprocess.CompletedProcess:
        rc = main([*base, *extra])
        return subprocess.CompletedProcess(extra, rc, "", capsys.readouterr().err)

    assert_one_line_error(run(), "already holds a training run", "--resume", "--overwrite")
    assert_one_line_error(run("--resume", "--overwrite"), "contradict")
    assert (out / "checkpoint.pt").read_bytes() == b"an old run"
    proc = run("--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=False)["state"]["step"] == 10
    assert json.loads((out / "run_config.json").read_text())["overwrite"] is True
    assert (out / "layer0_relu_16_l1_2" / "cfg.json").exists()


def test_config_file_sets_settings_and_flags_override(tmp_path):
    from attnsae.cli import build_parser, train_config

    (tmp_path / "c.yaml").write_text("layers: [0, 1]\nl1_coeffs: [1.5]\nlr: 0.0005\nlr_schedule: cosine\n")
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "c.yaml"), "--lr", "0.002"])
    cfg = train_config(args)
    assert cfg.layers == [0, 1] and cfg.l1_coeffs == [1.5] and cfg.lr_schedule == "cosine"
    assert cfg.lr == 0.002
    (tmp_path / "bad.yaml").write_text("layerz: [0]\n")
    with pytest.raises(AttnsaeError, match="unknown setting 'layerz'"):
        train_config(build_parser().parse_args(["train", "--config", str(tmp_path / "bad.yaml")]))


def test_train_config_coerces_and_validates_every_field():
    cfg = TrainConfig(lr="1e-3", layers=1, betas=(0.9, 0.999), progress="false", d_sae=[32])  # YAML-style values
    assert cfg.lr == 1e-3 and cfg.layers == [1] and cfg.betas == [0.9, 0.999] and cfg.progress is False
    assert [(s.layer, s.d_sae, s.l1_coeff) for s in cfg.specs(d_in=8)] == [(1, 32, 2.0)]
    product = TrainConfig(layers=[0, 1], l1_coeffs=[1, 2]).specs(d_in=8)  # d_sae: expansion_factor * d_in
    assert [(s.layer, s.l1_coeff, s.d_sae) for s in product] == [(0, 1, 64), (0, 2, 64), (1, 1, 64), (1, 2, 64)]
    paired = TrainConfig(layers=[0, 1], per_layer=True, l1_coeffs=[1, 2], d_sae=[32, 64]).specs(d_in=8)
    assert [(s.layer, s.l1_coeff, s.d_sae) for s in paired] == [(0, 1, 32), (1, 2, 64)]
    bad = [({"lr": 0}, "lr must be > 0"), ({"architecture": "gated"}, "architecture must be one of"),
           ({"context_size": 1}, "context_size must be >= 2"), ({"batch_size": "many"}, "batch_size must be an integer"),
           ({"betas": [0.9]}, "betas needs 2 values"), ({"layers": [0, 0]}, "repeats a layer"),
           ({"batch_size": 4096, "buffer_size": 1024}, "buffer_size"),
           ({"resample_every": 40, "resample_window": 50}, "resample_window"),
           ({"resume": True, "overwrite": True}, "contradict"),
           ({"layers": [0, 1], "per_layer": True, "l1_coeffs": [1, 2, 3]}, "per_layer"),
           ({"architecture": "topk", "ks": [64], "d_sae": [32]}, "must not exceed d_sae"),
           ({"l1_coeffs": [1, 1]}, "two SAEs with the same settings")]
    for kw, match in bad:
        with pytest.raises(AttnsaeError, match=match):
            TrainConfig(**kw)
    assert TrainConfig(resample_times=0, resample_every=40, resample_window=50).resample_window == 50
    with pytest.raises(AttnsaeError, match="unknown setting 'lrr'"):
        TrainConfig.from_dict({"lrr": 1})


@pytest.mark.integration
def test_training_from_a_cache_of_another_model_is_refused(tiny_model_dir, tmp_path):
    common = ["--context-size", "32", "--max-corpus-tokens", "4000", "--no-progress", "--layers", "0"]
    proc = run_cli("cache", "--model", tiny_model_dir, "--cache-out", str(tmp_path / "cache"), *common)
    assert proc.returncode == 0, proc.stderr
    wide = make_gpt2_dir(tmp_path / "wide", n_embd=64, n_head=4)
    proc = run_cli("train", "--model", wide, "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "o"), *common)
    assert_one_line_error(proc, "activation cache is for model")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").glob("layer*"))
    # without --model the run reads the cache's model, and its SAEs name the cache's model, corpus and contexts
    proc = run_cli("train", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "o2"), "--architecture", "topk",
                   "--d-sae", "64", "--total-tokens", "256", "--batch-size", "64",
                   "--context-size", "16", "--no-progress", "--layers", "0")
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(next((tmp_path / "o2").glob("layer0_*/cfg.json")).read_text())["metadata"]
    assert cfg["model_name"] == str(Path(tiny_model_dir).resolve()) or cfg["model_name"] == tiny_model_dir
    assert cfg["dataset_path"] == "stdlib" and cfg["context_size"] == 32


def test_auxk_with_every_dead_latent_matches_the_sparse_top_k_path():
    """AuxK's dense path (k = n_dead: all dead latents) gives the loss and gradients of the sparse top-k path."""
    from attnsae.training.losses import auxk_loss

    torch.manual_seed(0)
    sae = random_sae(24, 0, d_sae=96, architecture="topk", k=4)
    x = torch.randn(50, 24)
    dead = torch.zeros(96, dtype=torch.bool)
    dead[torch.randperm(96)[:7]] = True
    xc = x - sae.b_dec
    pre = (xc @ sae.W_enc + sae.b_enc).detach()
    err = torch.randn(50, 24)
    fast = auxk_loss(sae, x, pre, err, dead, aux_k=None)  # d_in // 2 = 12 >= 7 dead: the dense path
    grads_fast = torch.autograd.grad(fast, [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec])
    idx = torch.where(dead, pre, torch.full_like(pre, -torch.inf)).topk(7, dim=-1).indices
    e_hat = kernels.latents_forward(xc, sae.W_enc, sae.b_enc, sae.W_dec, idx, pre)
    slow = (e_hat - err).pow(2).sum(-1).mean() / err.sub(err.mean(0)).pow(2).sum(-1).mean()
    grads_slow = torch.autograd.grad(slow, [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec])
    torch.testing.assert_close(fast, slow)
    for a, b in zip(grads_fast, grads_slow):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert pre[:, dead].clamp_min(0).sum() > 0  # the dead latents do contribute
