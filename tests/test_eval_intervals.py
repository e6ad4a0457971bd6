"""Evaluation numbers with their uncertainty (issue 29): bootstrap intervals over contexts that close back to the
point estimates, seeded, in the JSON, table and plot; and the never-fired count with Chao1's unseen estimate."""

from __future__ import annotations

import json

import pytest
import torch

from attnsae.evals import intervals as iv
from attnsae.evals.eval_report import EvalReport
from attnsae.evals.metrics import evaluate
from attnsae.views.plots import recovery_plot
from attnsae.views.tables import eval_markdown, eval_table, with_interval
from conftest import random_sae, random_tokens

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def report(ref_model):
    saes = [random_sae(ref_model, 0, d_sae=64, seed=1, architecture="topk", k=8), random_sae(ref_model, 1, seed=2)]
    return evaluate(ref_model, saes, random_tokens(12, 24, seed=7), batch_size=5, progress=False)


def test_resampling_every_context_once_gives_the_point_estimates(ref_model):
    """The per-context sums the intervals resample add up to exactly what the point estimates are made of."""
    sae = random_sae(ref_model, 1, seed=3)
    from attnsae.evals import metrics as M

    seen = {}
    real = M._intervals

    def spy(W, sums, losses, j, layer):
        seen.update(sums=sums, losses=losses)
        return real(W, sums, losses, j, layer)

    M._intervals = spy
    try:
        rep = evaluate(ref_model, [sae], random_tokens(7, 20, seed=1), batch_size=3, progress=False)
    finally:
        M._intervals = real
    s, ones = rep.saes[0], torch.ones(1, 7, dtype=torch.float64)
    assert float(iv.explained_variance(ones, seen["sums"].contexts.stacked())[0]) == pytest.approx(
        s.explained_variance, rel=1e-9)
    L = seen["losses"]
    per = {"clean": L.clean, "sae": L.spliced[0], "zero": L.zero[1], "mean": L.mean[1]}
    means = {k: float((ones @ v.per_context("ce")) / (ones @ L.clean.per_context("n"))) for k, v in per.items()}
    assert means["sae"] == pytest.approx(s.ce_sae, rel=1e-9) and means["zero"] == pytest.approx(s.ce_zero, rel=1e-9)
    rec = (means["zero"] - means["sae"]) / (means["zero"] - means["clean"])
    assert rec == pytest.approx(s.ce_recovered_zero, rel=1e-9)
    assert float(L.spliced[0].per_context("kl").sum() / L.clean.per_context("n").sum()) == pytest.approx(s.kl_sae)


def test_every_interval_brackets_its_estimate_and_is_seeded(report, ref_model):
    for s in report.saes:
        assert set(s.intervals) == {"explained_variance", "ce_recovered_zero", "ce_recovered_mean", "kl_sae", "ce_sae"}
        for key, (lo, hi) in s.intervals.items():
            assert lo < hi and lo - 1e-9 <= getattr(s, key) <= hi + 1e-9, (key, lo, getattr(s, key), hi)
    assert report.bootstrap == {"resamples": 1000, "level": 0.95, "seed": 0, "over": "contexts"}
    w1, w2 = iv.weights(12), iv.weights(12)
    assert torch.equal(w1, w2) and torch.all(w1.sum(1) == 12)
    assert not torch.equal(w1, iv.weights(12, seed=1))


def test_intervals_and_unseen_counts_reach_the_json_the_table_and_the_plot(report, tmp_path):
    back = EvalReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert back.saes[1].intervals == pytest.approx(report.saes[1].intervals) and back.bootstrap == report.bootstrap
    text = eval_table(report)
    assert "95% intervals: bootstrap over the 12 contexts (1,000 resamples, seed 0)" in text
    assert "never fired in" in text and "Chao1 expects" in text
    assert "[" in eval_markdown(report.to_dict()["saes"])
    recovery_plot(report, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_recovered_share_whose_interval_holds_100_percent_says_so():
    assert with_interval("{:.1%}", 1.004, [0.97, 1.03]).endswith("(interval holds 100%)")
    assert with_interval("{:.1%}", 0.95, [0.93, 0.97]) == "95.0% [93.0%, 97.0%]"
    assert with_interval("{:.3f}", 0.9, [0.8, 1.1]) == "0.900 [0.800, 1.100]"  # not a share of 100%


def test_chao1_counts_the_latents_a_sample_of_this_size_misses():
    fires = torch.tensor([0] * 10 + [1] * 4 + [2] * 1 + [50] * 85)
    u = iv.unseen_estimate(fires)
    assert (u["never_fired"], u["seen_once"], u["seen_twice"]) == (10, 4, 1)
    assert u["expected_live_unseen"] == pytest.approx(4 * 3 / (2 * 2))
    assert u["dead_upper"] == pytest.approx(0.10) and u["dead_estimate"] == pytest.approx(0.07)
    assert iv.unseen_estimate(torch.tensor([0, 0, 5, 9]))["expected_live_unseen"] == 0  # no rare latents: none
