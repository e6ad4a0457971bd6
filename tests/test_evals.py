import dataclasses
import json
import math
import subprocess

import pytest
import torch

import tiny_archs
from attnsae.models.architecture import describe
from attnsae.cli import main
from attnsae.errors import AttnsaeError
from attnsae.evals import loss_head, metrics
from attnsae.evals.metrics import EvalReport, evaluate, reconstruction_metrics
from attnsae.models import load_model
from attnsae.sae.model import SAE
from attnsae.sae.formats import save_sae
from attnsae.views.plots import density_histogram
from attnsae.views.tables import eval_markdown, eval_table
from conftest import (assert_one_line_error, identity_sae, random_sae, random_tokens, run_cli, sharp_gpt2_dir,
                      zero_sae)


@pytest.fixture(scope="module", params=(4, 8), ids=lambda h: f"{h}heads")
def model(request, tmp_path_factory):
    return load_model(sharp_gpt2_dir(tmp_path_factory.mktemp(f"h{request.param}") / "gpt2", request.param))


def d_in(model) -> int:
    return model.cfg.n_heads * model.cfg.d_head


@torch.no_grad()
def direct_metrics(model, sae: SAE, layer: int, tokens: torch.Tensor) -> dict:
    """Every metric of one SAE computed by hand: full-batch runs with hand-written hooks, float64 losses."""
    targets = tokens[:, 1:]
    store = {}

    def run(fn=None):
        def hook(z, hook):
            z_cat = z.reshape(*z.shape[:2], -1)
            store["z"] = z_cat.clone()
            if fn is None:
                return z
            return torch.cat([z_cat[:, :1], fn(z_cat[:, 1:])], 1).reshape(z.shape)  # BOS left as it is

        logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])
        return logits[:, :-1].double().log_softmax(-1)

    clean = run()
    x = store["z"][:, 1:].reshape(-1, sae.d_in)
    mu = x.mean(0)
    x_hat, f, _ = sae(x)
    runs = {"sae": run(lambda z: sae(z).x_hat), "zero": run(torch.zeros_like), "mean": run(lambda z: mu.expand_as(z))}

    def ce(logp):
        return -logp.gather(-1, targets[..., None]).mean().item()

    def kl(logp):
        return (clean.exp() * (clean - logp)).sum(-1).mean().item()

    err = (x - x_hat).double()
    xd = x.double()
    head_sse = err.pow(2).reshape(len(x), model.cfg.n_heads, -1).sum((0, 2))
    head_sst = (xd - xd.mean(0)).pow(2).reshape(len(x), model.cfg.n_heads, -1).sum((0, 2))
    fires = (f > 0).double().mean(0)
    out = {
        "n_tokens": len(x), "l0": (f > 0).double().sum(-1).mean().item(),
        "explained_variance": 1 - head_sse.sum().item() / head_sst.sum().item(),
        "nmse": err.pow(2).sum().item() / xd.pow(2).sum().item(),
        "cosine": torch.nn.functional.cosine_similarity(x, x_hat, dim=-1).double().mean().item(),
        "ce_clean": ce(clean), "ce_sae": ce(runs["sae"]), "ce_zero": ce(runs["zero"]), "ce_mean": ce(runs["mean"]),
        "kl_sae": kl(runs["sae"]), "kl_zero": kl(runs["zero"]), "kl_mean": kl(runs["mean"]),
        "dead_frac": (fires == 0).double().mean().item(), "dense_frac": (fires > 0.1).double().mean().item(),
        "head_fvu": (head_sse / head_sst).tolist(), "head_error_share": (head_sse / head_sse.sum()).tolist(),
        "feature_frequency": fires.tolist(),
    }
    for base in ("zero", "mean"):
        out[f"ce_recovered_{base}"] = (out[f"ce_{base}"] - out["ce_sae"]) / (out[f"ce_{base}"] - out["ce_clean"])
    return out


def test_metrics_equal_a_direct_computation(model):
    tokens = random_tokens(n=10, pos=12, seed=3)
    saes = [random_sae(d_in(model), 1, seed=5), random_sae(d_in(model), 0, seed=6, architecture="topk")]
    report = evaluate(model, saes, tokens, batch_size=4, progress=False)  # 3 batches, the last one short
    assert [s.name for s in report.saes] == ["L1", "L0"]
    assert report.n_loss_tokens == 10 * 11 and report.keep_bos
    for s, sae in zip(report.saes, saes):
        expected = direct_metrics(model, sae, s.layer, tokens)
        for key, value in expected.items():
            assert getattr(s, key) == pytest.approx(value, rel=1e-4, abs=1e-6), key
        assert expected["kl_sae"] > 1e-3 and expected["ce_zero"] != expected["ce_clean"]  # a non-trivial model


def test_per_head_errors_add_up_to_the_whole(model):
    sae = random_sae(d_in(model), 0, seed=7)
    s = evaluate(model, sae, random_tokens(seed=4), batch_size=4, progress=False).saes[0]
    assert len(s.head_fvu) == model.cfg.n_heads
    assert sum(s.head_error_share) == pytest.approx(1.0)
    # Each head's FVU weighted by its share of the variance gives the layer's FVU, 1 - explained variance.
    variance_share = [e / f for e, f in zip(s.head_error_share, s.head_fvu)]
    variance_share = [v / sum(variance_share) for v in variance_share]
    assert sum(f * v for f, v in zip(s.head_fvu, variance_share)) == pytest.approx(1 - s.explained_variance)


def test_identity_sae_recovers_all_and_zero_sae_nothing(model):
    tokens = random_tokens(seed=8)
    report = evaluate(model, [identity_sae(d_in(model), 1), zero_sae(d_in(model), 1)], tokens, batch_size=4,
                      progress=False, keep_bos=False)
    ident, zero = report.saes
    assert ident.ce_recovered_zero == pytest.approx(1.0, abs=1e-9)
    assert ident.ce_recovered_mean == pytest.approx(1.0, abs=1e-9)
    assert ident.kl_sae == pytest.approx(0.0, abs=1e-9)
    assert ident.explained_variance == pytest.approx(1.0) and ident.nmse == pytest.approx(0.0)
    assert zero.ce_recovered_zero == 0.0
    assert zero.ce_sae == zero.ce_zero and zero.kl_sae == zero.kl_zero
    assert zero.nmse == pytest.approx(1.0)


def test_report_is_json_and_renders(model, tmp_path):
    tokens = random_tokens(seed=9)
    saes = [random_sae(d_in(model), 0, d_sae=40), zero_sae(d_in(model), 0)]
    with torch.no_grad():
        saes[0].b_enc[:5] = -100.0  # five features that never fire
    report = evaluate(model, saes, tokens, batch_size=8, progress=False, names=["a", "b"])
    report.saes[1].head_fvu[0] = float("nan")
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["saes"][0]["dead_frac"] == pytest.approx(5 / 40) and d["saes"][1]["head_fvu"][0] is None
    assert EvalReport.from_dict(d).saes[0] == report.saes[0]
    table = eval_table(report)
    assert "rec.zero" in table and "\na " in table and "n/a" in table
    density_histogram([report, report.saes[0]], tmp_path / "density.png")
    assert (tmp_path / "density.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_is_refused(model):
    n = d_in(model)
    tokens = random_tokens()
    with pytest.raises(AttnsaeError, match="empty"):
        evaluate(model, random_sae(n, 0), tokens[:0], progress=False)
    with pytest.raises(AttnsaeError, match="d_in"):
        evaluate(model, random_sae(n * 2, 0), tokens, progress=False)
    with pytest.raises(AttnsaeError, match="but the model has layers 0..1"):
        evaluate(model, random_sae(n, 9), tokens, progress=False)
    with pytest.raises(AttnsaeError, match="vocabulary"):
        evaluate(model, random_sae(n, 0), tokens + 10_000, progress=False)


def test_reconstruction_metrics_keep_their_meaning():
    sae = identity_sae(6, 0)
    x = torch.randn(50, 6)
    m = reconstruction_metrics(sae, [x[:20], x[20:]])
    assert m.n_tokens == 50 and m.explained_variance == pytest.approx(1.0) and m.cosine == pytest.approx(1.0)
    assert m.l0 == pytest.approx((x != 0).sum(-1).double().mean().item())


# ----------------------------------------------------------------------------------------------- CLI


def run_main(capsys, *args: str) -> subprocess.CompletedProcess:
    """``attnsae ARGS`` in this process (the model loads faster than in a subprocess)."""
    rc = main(list(args))
    cap = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, cap.out, cap.err)


@pytest.fixture(scope="module")
def sae_dirs(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("saes")
    n = d_in(tiny_model)
    made = {"l0": random_sae(n, 0, seed=1), "l1": random_sae(n, 1, seed=2), "wide": random_sae(n + 8, 0),
            "deep": random_sae(n, 7), "resid": random_sae(n, 0)}
    made["resid"].cfg.hook_name = "blocks.0.hook_resid_pre"
    return {name: str(save_sae(sae, root / name)) for name, sae in made.items()}


@pytest.mark.integration
def test_cli_eval_writes_one_report_for_several_saes(tiny_model_dir, sae_dirs, tmp_path):
    out = tmp_path / "ev"
    proc = run_cli("eval", "--sae", sae_dirs["l0"], sae_dirs["l1"], "--model", tiny_model_dir, "--n-tokens", "300",
                   "--context-size", "32", "--batch-size", "4", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    d = json.loads((out / "eval.json").read_text())
    assert [s["name"] for s in d["saes"]] == ["l0", "l1"] and [s["layer"] for s in d["saes"]] == [0, 1]
    assert d["n_contexts"] == math.ceil(300 / 32) and d["meta"]["split"] == "validation"
    assert len(d["saes"][0]["feature_frequency"]) == 64
    assert (out / "density.png").stat().st_size > 0
    assert "CE clean" in proc.stdout and "eval.json" in proc.stdout


@pytest.mark.parametrize("sae,needles", [("wide", ("d_in",)), ("deep", ("reads layer 7", "layers 0..1")),
                                         ("resid", ("hook_resid_pre", "hook_z"))])
def test_cli_eval_refuses_an_sae_that_does_not_fit(capsys, tiny_model_dir, sae_dirs, tmp_path, sae, needles):
    proc = run_main(capsys, "eval", "--sae", sae_dirs[sae], "--model", tiny_model_dir, "--out", str(tmp_path))
    assert_one_line_error(proc, sae_dirs[sae], *needles)
    assert not (tmp_path / "eval.json").exists()


def test_cli_eval_refuses_an_empty_split(capsys, tiny_model_dir, sae_dirs, tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_main(capsys, "eval", "--sae", sae_dirs["l0"], "--model", tiny_model_dir, "--source",
                    str(tmp_path / "empty"), "--context-size", "32", "--out", str(tmp_path / "ev"), "--no-progress")
    assert_one_line_error(proc, "validation", "no full context")


# ----------------------------------------------------------------------------------------------- memory, refusal


def test_chunked_losses_equal_a_direct_computation(model, monkeypatch):
    """Several position chunks with an uneven last one (11 predicted positions in chunks of 3), and one position per
    chunk; and the fallback through the model's own logits (an LM head that is not linear) gives the same numbers."""
    tokens = random_tokens(n=10, pos=12, seed=11)
    sae = random_sae(d_in(model), 1, seed=12)
    expected = direct_metrics(model, sae, 1, tokens)
    three = 3 * 4 * model.cfg.d_vocab * 4 * loss_head.LIVE_CHUNK_TENSORS  # 3 positions of a 4-context batch
    assert loss_head.LossHead(model, True, three).chunk_positions(4) == 3
    assert [s.stop - s.start for s in loss_head.LossHead(model, True, three).chunks(4, 12)] == [3, 3, 3, 2]
    keys = ("ce_clean", "ce_sae", "ce_zero", "ce_mean", "kl_sae", "kl_zero", "kl_mean", "ce_recovered_zero")

    def check(**kw):
        s = evaluate(model, sae, tokens, batch_size=4, progress=False, **kw).saes[0]
        for key in keys:
            assert getattr(s, key) == pytest.approx(expected[key], rel=1e-4, abs=1e-6), (key, kw)

    assert describe(model).lm_head == "linear"
    check(max_chunk_bytes=three)
    check(max_chunk_bytes=1)
    kept = evaluate(model, sae, tokens, batch_size=4, progress=False, max_chunk_bytes=three).saes[0]
    monkeypatch.setattr(loss_head, "KEEP_CLEAN_BYTES", 0)  # the clean log-probabilities recomputed for every run
    check(max_chunk_bytes=three)
    again = evaluate(model, sae, tokens, batch_size=4, progress=False, max_chunk_bytes=three).saes[0]
    assert all(getattr(kept, k) == getattr(again, k) for k in keys)  # keeping them changes no bit
    monkeypatch.setattr(metrics, "describe", lambda m: dataclasses.replace(describe(m), lm_head="nonlinear"))
    check(max_chunk_bytes=three)


def test_default_batch_size_follows_the_vocabulary(model):
    assert metrics.default_batch_size(model, 128) == 16  # a linear head never makes full logits
    nonlinear = dataclasses.replace(describe(model), lm_head="nonlinear")
    assert metrics.default_batch_size(model, 128, nonlinear) == 16  # 2**25 // (128 * 8192) = 32, capped at 16
    big = dataclasses.replace(nonlinear, d_vocab=262_144)
    assert metrics.default_batch_size(model, 128, big) == 1 and metrics.default_batch_size(model, 32, big) == 4


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return tiny_archs.build("bert", tmp_path_factory.mktemp("archs"))


@pytest.fixture(scope="module")
def bert(bert_dir):
    return load_model(bert_dir)


def test_encoder_refuses_ce_and_kl_but_reports_reconstruction(bert):
    n = d_in(bert)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, bert.cfg.d_vocab, (6, 16), generator=g)
    tokens[:, 0] = bert.tokenizer.cls_token_id
    sae = random_sae(n, 1, seed=3)
    report = evaluate(bert, sae, tokens, batch_size=4, progress=False)
    s = report.saes[0]
    assert report.ce_refused and "CE and KL are refused" in report.ce_refused and "\n" not in report.ce_refused
    assert report.n_loss_tokens == 0
    for key in metrics.LOSS_FIELDS:
        assert math.isnan(getattr(s, key)), key
    # reconstruction over every position but CLS, from full bidirectional contexts
    store = {}
    bert.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", lambda z, hook: store.setdefault("z", z))])
    x = store["z"][:, 1:].reshape(-1, n)
    m = reconstruction_metrics(sae, [x])
    assert s.n_tokens == 6 * 15 and math.isfinite(s.l0) and math.isfinite(s.explained_variance)
    assert s.l0 == pytest.approx(m.l0) and s.explained_variance == pytest.approx(m.explained_variance, rel=1e-5)
    d = report.to_dict()
    assert d["ce_refused"] == report.ce_refused and EvalReport.from_dict(d).ce_refused == report.ce_refused
    table = eval_table(report)
    assert table.splitlines()[2].split().count("refused") == 7 and "n/a" not in table.splitlines()[2]
    assert "refused" in eval_markdown(d["saes"], ce_refused=d["ce_refused"])


def test_cli_eval_on_an_encoder_notes_the_refusal_and_succeeds(capsys, bert, bert_dir, tmp_path):
    sae = random_sae(d_in(bert), 1, seed=4)
    sae.cfg.model_name = bert_dir
    path = str(save_sae(sae, tmp_path / "encoder_sae"))
    out = tmp_path / "ev"
    proc = run_main(capsys, "eval", "--sae", path, "--model", bert_dir, "--source", "stdlib", "--n-tokens", "2048",
                    "--context-size", "64", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    notes = [l for l in (proc.stdout + proc.stderr).splitlines() if "CE and KL are refused" in l]
    assert len(notes) == 1 and notes[0].startswith("note: "), proc.stdout + proc.stderr
    cells = next(l for l in proc.stdout.splitlines() if l.startswith("encoder_sae ")).split()
    assert cells.count("refused") == 7 and "n/a" not in cells and float(cells[3]) > 0, cells  # CE/KL; L0
    assert "expl.var" in proc.stdout
    d = json.loads((out / "eval.json").read_text())
    assert d["ce_refused"] and d["saes"][0]["ce_clean"] is None and d["saes"][0]["l0"] > 0
