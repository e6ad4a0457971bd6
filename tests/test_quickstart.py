"""The main job on the embedded default, run once: the acceptance numbers of issues 4 and 5.

The run keeps every default but two budgets, cut to keep the suite under 15 minutes: 1.5 M training tokens per SAE
(the default: 4 M) and 65,536 validation tokens scanned for the dashboards (262,144); the summary is measured on the
default 65,536 validation tokens, as in the README. The bars below are issue 4's at that budget (explained variance
0.77 where the default run is held to 0.80); the README's table comes from the full default run.
"""

import json

import pytest

from attnsae.sae.formats import load_sae
from conftest import run_cli

pytestmark = pytest.mark.acceptance  # one quickstart (about 5 minutes on one core)
BUDGET = ("--train-tokens", "1500000", "--dashboard-tokens", "65536")


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """``attnsae quickstart --out OUT BUDGET``, run once: (OUT, its summary.json, its stdout)."""
    out = tmp_path_factory.mktemp("quickstart") / "out"
    proc = run_cli("quickstart", "--out", str(out), *BUDGET, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, json.loads((out / "summary.json").read_text()), proc.stdout


def test_quickstart_saes_are_sparse_faithful_and_alive_on_validation(quickstart):
    _, summary, stdout = quickstart
    rows = summary["validation"]["saes"]
    assert [r["layer"] for r in rows] == [0, 1]
    for r in rows:
        assert r["n_tokens"] > 50_000
        assert r["l0"] <= 40, r
        assert r["explained_variance"] >= 0.77, r  # 0.815 / 0.786 at 1.5 M tokens; 0.863 / 0.841 at the default 4 M
        assert r["dead_frac"] <= 0.15, r
    assert "expl.var" in stdout and "rec.zero" in stdout


def test_quickstart_ce_loss_recovered_is_at_least_90_percent(quickstart):
    _, summary, _ = quickstart
    for r in summary["validation"]["saes"]:
        assert r["ce_recovered_zero"] >= 0.90, r  # 95.0% / 91.6% at 1.5 M tokens; 96.8% / 94.2% at 4 M
        assert r["ce_clean"] < r["ce_sae"] < r["ce_zero"]


def test_quickstart_writes_loadable_saes_and_plots(quickstart):
    out, summary, _ = quickstart
    assert (out / "density.png").stat().st_size > 1000
    assert (out / "recovery.png").stat().st_size > 1000  # CE recovered with its intervals
    for layer, path in zip((0, 1), summary["saes"].values()):
        sae = load_sae(path)
        assert sae.cfg.hook_name == f"blocks.{layer}.attn.hook_z"
        assert sae.cfg.model_name == "attnsae-stdlib-2l" and sae.d_in == 256


# ----------------------------------------------------------------------------------------------- reading (issue 7)

def _induction_features(out) -> list[int]:
    fams = json.loads((out / "dashboard" / "families.json").read_text())
    return [f["i"] for f in fams["features"]["L1"] if f["family"] == "induction"]


def _repeated_prompts(model, n: int = 32, half: int = 40, seed: int = 0):
    """[BOS] r r (repeated) and [BOS] r r' (not repeated), r and r' random tokens: int64 [n, 1 + 2·half] each."""
    import torch

    g = torch.Generator().manual_seed(seed)
    r = torch.randint(1, model.cfg.d_vocab, (n, half), generator=g)
    r2 = torch.randint(1, model.cfg.d_vocab, (n, half), generator=g)
    bos = torch.zeros(n, 1, dtype=torch.long)
    return torch.cat([bos, r, r], 1), torch.cat([bos, r, r2], 1)


def check_induction_features(out, summary, model) -> dict:
    """The acceptance numbers for layer-1 induction features (see the test below for the margins)."""
    import torch

    from attnsae.activations import harvest_z
    from attnsae.attribution import dfa

    feats = _induction_features(out)
    sae = load_sae(summary["saes"]["L1"])
    half = 40
    rep, unrep = _repeated_prompts(model, half=half)
    acts = {}
    for name, toks in (("rep", rep), ("unrep", unrep)):
        z = harvest_z(model, toks, [1])[1].reshape(*toks.shape, -1)
        acts[name] = sae.encode(z[:, half + 1:]).detach()[..., feats]  # the second half: [n, half, n_feats]
    rep_mean, unrep_mean = acts["rep"].mean((0, 1)), acts["unrep"].mean((0, 1))  # [n_feats]
    fires = rep_mean > 0
    res = dfa(model, sae, rep, features=None, dest=list(range(half + 1, 2 * half + 1)))
    keep = torch.isin(res.feature, torch.tensor(feats))
    src, dest = res.by_src[keep], res.dest[keep]
    peak = torch.stack([src[e, 1:dest[e] + 1].argmax() + 1 for e in range(len(dest))])
    return {"n_induction": len(feats), "n_firing_on_repeats": int(fires.sum()),
            "ratio_total": float(rep_mean.sum() / unrep_mean.sum().clamp_min(1e-9)),
            "share_5x": float((rep_mean[fires] >= 5 * unrep_mean[fires]).float().mean()),
            "peak_after_previous": float((peak == dest - half + 1).float().mean()), "n_entries": len(dest)}


def test_quickstart_layer1_has_induction_features_that_fire_on_repeats_from_the_previous_occurrence(quickstart,
                                                                                                    ref_model):
    """Margins: on [BOS] r r prompts the induction features' summed mean activation over the second copy is at least
    4x that on [BOS] r r' (measured 7.3x; the other live layer-1 features: 0.6x), at least 60% of those that fire are
    individually 5x higher (measured 70%), and for at least 90% of their firings on the second copy the DFA peaks at
    the token right after the previous occurrence of the current token (measured 99.1%)."""
    out, summary, stdout = quickstart
    r = check_induction_features(out, summary, ref_model)
    assert r["n_induction"] >= 50 and r["n_firing_on_repeats"] >= 25, r
    assert r["ratio_total"] >= 4, r
    assert r["share_5x"] >= 0.6, r
    assert r["peak_after_previous"] >= 0.9 and r["n_entries"] >= 1000, r


def test_quickstart_writes_dashboards_families_and_head_report(quickstart):
    out, summary, stdout = quickstart
    site = out / "dashboard"
    assert f"open {site / 'index.html'}" in stdout
    assert summary["dashboard"]["heads"] in stdout and "heads polysemantic" in stdout
    assert summary["dashboard"]["n_heads"] == 16
    counts = summary["dashboard"]["families"]
    assert counts["L0"]["induction"] <= 0.05 * counts["L0"]["live"]  # layer 0 cannot do induction: few false hits
    assert counts["L1"]["induction"] >= 50
    for name in ("index.html", "heads.html", "families.png"):
        assert (site / name).stat().st_size > 1000
    assert "| L1 |" in (site / "families.md").read_text()


def test_quickstart_prints_an_explore_command_that_serves_its_saes(quickstart):
    """The printed `attnsae explore ...` line, run as printed (port 0: a free one), serves the explorer on both SAEs."""
    import shlex
    import signal
    import subprocess
    import sys

    import httpx

    out, summary, stdout = quickstart
    line = next(x for x in stdout.splitlines() if x.startswith("explore any prompt"))
    command = line.split(": ", 1)[1]
    assert command == summary["explore"] and "--dashboard" in command
    args = shlex.split(command)
    assert args[:2] == ["attnsae", "explore"]
    proc = subprocess.Popen([sys.executable, "-m", "attnsae", *args[1:], "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split("open ", 1)[1].split()[0]
        info = httpx.get(url + "api/info", timeout=30).json()
        assert [s["layer"] for s in info["saes"]] == [0, 1] and info["dashboard"]
        rows = httpx.post(url + "api/features", json={"prompt": "import os\nimport os"}, timeout=30).json()["rows"]
        assert any(e["layer"] == 1 and e["family"] for row in rows for e in row)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_quickstart_dashboards_render_offline_in_chromium(quickstart, browser, tmp_path):
    out, summary, _ = quickstart
    feature = _induction_features(out)[0]
    site = out / "dashboard"
    page = browser.open(f"file://{site / 'index.html'}#L1/{feature}")
    page.wait_for("document.querySelectorAll('.ex .t.dest').length > 0", timeout=20)
    page.screenshot(path=tmp_path / "feature.png")
    heads = browser.open(f"file://{site / 'heads.html'}")
    heads.wait_for("document.querySelectorAll('a[href*=\"index.html#L\"]').length >= 100", timeout=20)
    for p in (page, heads):
        assert not p.errors(), p.errors()
        assert p.requests and all(u.startswith("file://") for u in p.requests), p.requests
