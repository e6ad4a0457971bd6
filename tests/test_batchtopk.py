"""BatchTopK and Matryoshka BatchTopK SAEs (issue 29): a training batch keeps its top k x batch entries through the
sparse kernels, with the dense reference's values and gradients; Matryoshka's loss is the sum of its prefixes'; the
inference threshold is the moving average SAELens keeps, used as SAELens' saved JumpReLU SAE uses it; a run trains,
saves and resumes them; their settings are refused in one line when wrong."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from attnsae.errors import AttnsaeError
from attnsae.sae import kernels
from attnsae.sae.formats import load_sae, save_sae
from attnsae.sae.model import SAE, SAEConfig
from attnsae.training.config import SAESpec, TrainConfig
from attnsae.training.losses import sae_loss
from attnsae.training.trainer import fit
from conftest import loss_both_ways
from dist_runs import LayerSource

WIDTHS = [16, 48, 128]


@pytest.fixture
def checked(monkeypatch):
    """PyTorch checks every sparse tensor the kernels build (sorted columns, indices in range)."""
    monkeypatch.setattr(kernels, "CHECK_INVARIANTS", True)


def make(arch: str, d_in: int = 16, d_sae: int = 128, k: int = 4, seed: int = 0, **kw) -> SAE:
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, k=k,
                        matryoshka_widths=WIDTHS if arch == "matryoshka" else None, **kw))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.3)
    return sae


def flat_top_n(pre: torch.Tensor, n: int) -> torch.Tensor:
    """SAELens' BatchTopK selection, plainly: relu, one top n of the flattened batch; the kept positive entries."""
    top = F.relu(pre).reshape(-1).topk(n)
    return top.indices[top.values > 0].sort().values


@pytest.mark.parametrize("B, D, k", [(7, 50, 3), (64, 300, 5), (40, 1000, 8)])
def test_batch_topk_is_the_top_k_times_batch_of_the_flattened_batch_even_with_busy_rows(B, D, k):
    """The candidates' shortcut (each row's top 2k) gives the exact flat top k*B, also when a few rows hold far more
    than 2k of the batch's largest entries or values tie, and keeps no entry <= 0."""
    g = torch.Generator().manual_seed(B)
    for skew, busy, ties in [(0.0, False, False), (1.0, False, False), (0.0, True, False), (3.0, True, False),
                             (0.0, False, True)]:
        pre = torch.randn(B, D, generator=g) * torch.exp(skew * torch.randn(B, 1, generator=g)) - 0.5
        if busy:
            pre[1] += 10.0  # a busy row: its every entry is among the batch's largest
        if ties:
            pre = (pre * 4).round() / 4  # many equal values: the top k*B ends inside a tie
        for factor in (1, 2, 4):
            got, want = kernels.batch_topk(pre, k * B, factor * k), flat_top_n(pre, k * B)
            assert len(got) == len(want) and torch.equal(pre.reshape(-1)[got].sort().values,
                                                         pre.reshape(-1)[want].sort().values), (skew, factor)
            if not ties:  # (which of the tied entries is kept is topk's choice)
                assert torch.equal(got, want), (skew, busy, factor)
    pre = -torch.rand(B, D, generator=g)  # nothing positive: nothing kept
    assert kernels.batch_topk(pre, k * B, 2 * k).numel() == 0


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
@pytest.mark.parametrize("sparse", [True, False])
def test_a_training_batch_keeps_exactly_k_times_batch_entries_spread_unevenly_over_its_rows(arch, sparse):
    sae = make(arch)
    x = torch.randn(50, 16) * torch.linspace(0.2, 3.0, 50)[:, None]  # rows of different norms
    out = sae_loss(sae, SAESpec(layer=0, architecture=arch, d_sae=128, k=4), x, None, sparse_kernel=sparse)
    assert int(out.fired.sum()) == 4 * 50 and float(out.l0) == 4.0
    with torch.no_grad():
        per_row = (F.relu(sae.pre_acts(x)).reshape(-1).topk(200).values.min() <= F.relu(sae.pre_acts(x))).sum(-1)
    assert per_row.min() < 4 < per_row.max()  # the batch's k, not each row's
    assert int(per_row.sum()) == 200


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_the_sparse_path_gives_the_dense_references_values_and_gradients(arch, apply_b_dec, checked):
    """Loss terms, firing counts, every prefix's reconstruction and every gradient of the sparse kernels (one decode of
    (row, level) bags, a running sum over the levels) equal SAELens' dense computation's."""
    sae = make(arch, d_sae=128, k=5, apply_b_dec_to_input=apply_b_dec)
    x = torch.randn(40, 16)
    spec = SAESpec(layer=0, architecture=arch, d_sae=128, k=5)
    (a, ga), (b, gb) = loss_both_ways(sae, spec, x)
    assert a.parts.keys() == b.parts.keys() == ({"mse", "inner_mse", "auxk"} if arch == "matryoshka" else
                                                {"mse", "auxk"})
    assert torch.equal(a.fired, b.fired) and torch.equal(a.l0, b.l0) and torch.equal(a.min_act, b.min_act)
    for name in b.parts:
        torch.testing.assert_close(a.parts[name], b.parts[name])
    torch.testing.assert_close(a.x_hat, b.x_hat)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)
    assert all(g.abs().sum() > 0 for g in ga)
    ps = (x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, 5, sae.cfg.matryoshka_widths, apply_b_dec)
    torch.testing.assert_close(kernels.batchtopk_forward(*ps).levels, kernels.batchtopk_reference(*ps).levels)


def test_matryoshka_loss_is_the_sum_of_each_prefix_reconstruction_loss():
    """SAELens' Matryoshka loss: the squared error of the reconstruction from latents [0, w) for every width w
    (d_sae's is the whole SAE's), each summed over dims and averaged over the batch, added up; plus AuxK."""
    sae = make("matryoshka", k=6)
    x = torch.randn(30, 16)
    dead = torch.zeros(128, dtype=torch.bool)
    dead[100:] = True
    out = sae_loss(sae, SAESpec(layer=0, architecture="matryoshka", d_sae=128, k=6), x, dead)
    with torch.no_grad():  # by hand
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        f = torch.zeros(30 * 128).index_put_((flat_top_n(pre, 6 * 30),), F.relu(pre).reshape(-1)[
            flat_top_n(pre, 6 * 30)]).view(30, 128)
        prefix = [(x - (f[:, :w] @ sae.W_dec[:w] + sae.b_dec)).pow(2).sum(-1).mean() for w in WIDTHS]
    assert min(abs(float(a - b)) for a, b in zip(prefix, prefix[1:])) > 1.0  # three different losses
    torch.testing.assert_close(out.parts["mse"], prefix[-1])
    torch.testing.assert_close(out.parts["inner_mse"], prefix[0] + prefix[1])
    assert out.parts["auxk"] > 0
    torch.testing.assert_close(out.loss, sum(prefix) + out.parts["auxk"])


def test_the_threshold_is_a_moving_average_of_the_smallest_kept_activation_in_float64():
    """SAELens' BatchTopKTrainingSAE.update_topk_threshold: t <- (1 - lr) t + lr * min(kept activations), from 0, in
    float64; a batch that keeps nothing leaves t."""
    sae = make("batchtopk", topk_threshold_lr=0.25)
    assert sae.topk_threshold.dtype == torch.float64 and float(sae.topk_threshold) == 0
    expected = 0.0
    for i in range(3):
        x = torch.randn(20, 16, generator=torch.Generator().manual_seed(i))
        out = sae_loss(sae, SAESpec(layer=0, architecture="batchtopk", d_sae=128, k=4), x, None)
        with torch.no_grad():
            pre = sae.pre_acts(x).reshape(-1)
            smallest = float(pre[flat_top_n(pre.view(20, 128), 80)].min())
        sae.update_topk_threshold(out.min_act)
        expected = 0.75 * expected + 0.25 * smallest
        assert float(sae.topk_threshold) == pytest.approx(expected, rel=1e-12)
    sae.update_topk_threshold(torch.tensor(float("inf")))
    assert float(sae.topk_threshold) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_inference_is_relu_above_the_one_saved_threshold_as_saelens_jumprelu_reads_it(arch, tmp_path):
    """At inference an entry is kept when it is above the threshold (one for every latent), as SAELens' JumpReLU SAE
    reads the saved file: the same file read as a plain jumprelu SAE (our metadata removed) encodes the same."""
    sae = make(arch, dtype="float32")
    x = torch.randn(64, 16)
    with torch.no_grad():
        pre = sae.pre_acts(x)
        sae.topk_threshold.fill_(float(pre.flatten().sort().values[-300]))  # exactly one entry's value
    f = sae.encode(x)
    t = sae.threshold
    assert t.dtype == torch.float32 and torch.equal(t, torch.full((128,), float(sae.topk_threshold)))
    assert torch.equal(f, torch.where(pre > t, pre, 0.0)) and int((f > 0).sum()) == 299  # at the threshold: 0
    path = save_sae(sae, tmp_path / "sae")
    cfg = json.loads((path / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and "k" not in cfg
    assert cfg["metadata"]["training_architecture"] == {"batchtopk": "batchtopk",
                                                        "matryoshka": "matryoshka_batchtopk"}[arch]
    assert cfg["metadata"]["training_architecture_details"]["k"] == 4
    del cfg["metadata"]["attnsae"]
    (path / "cfg.json").write_text(json.dumps(cfg))
    plain = load_sae(path)
    assert plain.cfg.architecture == "jumprelu" and torch.equal(plain.threshold, t)
    assert torch.equal(plain.encode(x), f)


def test_a_batchtopk_file_whose_thresholds_differ_is_refused_in_one_line(tmp_path):
    path = save_sae(make("batchtopk"), tmp_path / "sae")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / "sae_weights.safetensors"))
    tensors["threshold"][3] += 1
    save_file(tensors, str(path / "sae_weights.safetensors"))
    with pytest.raises(AttnsaeError, match="one threshold >= 0 for every latent") as e:
        load_sae(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_a_run_trains_saves_and_resumes_exactly_threshold_included(arch, tmp_path):
    matryoshka = arch == "matryoshka"
    cfg = TrainConfig(total_tokens=64 * 30, batch_size=64, log_every=5, ckpt_every=10, dead_window=4, progress=False,
                      architecture=arch, ks=[3], d_sae=[48], matryoshka_widths=[8, 24] if matryoshka else None)
    specs = cfg.specs(LayerSource.D_IN)
    assert specs[0].name == f"layer0_{arch}_48_k3"
    assert specs[0].matryoshka_widths == ([8, 24, 48] if matryoshka else None)  # d_sae added as the last width
    full = fit(cfg, specs, LayerSource(), tmp_path / "a")[0]
    assert float(full.topk_threshold) > 0
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["l0"] == 3.0 for r in records) and ("inner_mse" in records[-1]) == (arch == "matryoshka")
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, specs, LayerSource(crash_at=25), tmp_path / "b")
    resumed = fit(replace(cfg, resume=True), specs, LayerSource(), tmp_path / "b")[0]
    for name, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[name]), name
    loaded = load_sae(tmp_path / "a" / specs[0].name)
    assert loaded.cfg == full.cfg and torch.equal(loaded.topk_threshold, full.topk_threshold)


@pytest.mark.parametrize("kw, needle", [
    (dict(architecture="batchtopk"), "architecture 'batchtopk' needs k"),
    (dict(architecture="matryoshka", k=4), "needs matryoshka_widths"),
    (dict(architecture="matryoshka", k=4, matryoshka_widths=[8, 8, 64]), "strictly increasing"),
    (dict(architecture="matryoshka", k=4, matryoshka_widths=[8, 32]), "must end at d_sae (64)"),
    (dict(architecture="matryoshka", k=4, matryoshka_widths=[0, 64]), "positive integers"),
    (dict(architecture="batchtopk", k=4, matryoshka_widths=[8, 64]), "is for architecture 'matryoshka'"),
    (dict(architecture="batchtopk", k=4, topk_threshold_lr=0.0), "topk_threshold_lr must be a number in (0, 1]"),
    (dict(architecture="batchtopk", k=65), "k must be an integer in 1..d_sae"),
])
def test_sae_config_errors_are_one_line(kw, needle):
    with pytest.raises(AttnsaeError) as e:
        SAEConfig(d_in=8, d_sae=64, **kw)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kw, needle", [
    (dict(architecture="matryoshka"), "needs matryoshka_widths"),
    (dict(architecture="matryoshka", matryoshka_widths=[64, 32]), "strictly increasing"),
    (dict(architecture="matryoshka", matryoshka_widths=[32, 128], d_sae=[64]), "past d_sae (64)"),
    (dict(architecture="topk", matryoshka_widths=[32]), "matryoshka_widths is for --architecture matryoshka"),
    (dict(architecture="batchtopk", ks=[80], d_sae=[64]), "k (80) must not exceed d_sae (64)"),
    (dict(architecture="batchtopk", topk_threshold_lr=1.5), "topk_threshold_lr must be <= 1"),
])
def test_train_config_errors_are_one_line(kw, needle):
    with pytest.raises(AttnsaeError) as e:
        TrainConfig(**kw)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_the_cli_flags_reach_the_matryoshka_sae():
    """`attnsae train --architecture matryoshka --matryoshka-widths ... --ks ... --topk-threshold-lr ...`: each
    setting reaches the SAE's own config; d_sae, when not among the widths, is the last."""
    from attnsae.cli import build_parser, train_config

    args = build_parser().parse_args(["train", "--architecture", "matryoshka", "--matryoshka-widths", "64", "256",
                                      "--ks", "16", "--topk-threshold-lr", "0.05", "--d-sae", "1024"])
    (spec,) = train_config(args).specs(d_in=64)
    cfg = spec.sae_config(64)
    assert (cfg.architecture, cfg.k, cfg.matryoshka_widths, cfg.topk_threshold_lr) == ("matryoshka", 16,
                                                                                      [64, 256, 1024], 0.05)
