"""The main job on the embedded default, run once with its defaults: the acceptance numbers of issues 4 and 5."""

import json

import pytest

from attnsae.sae_io import load_sae
from conftest import run_cli


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    proc = run_cli("quickstart", "--out", str(out), timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, json.loads((out / "summary.json").read_text()), proc.stdout


def test_quickstart_saes_are_sparse_faithful_and_alive_on_validation(quickstart):
    _, summary, stdout = quickstart
    rows = summary["validation"]["saes"]
    assert [r["layer"] for r in rows] == [0, 1]
    for r in rows:
        assert r["n_tokens"] > 50_000
        assert r["l0"] <= 40, r
        assert r["explained_variance"] >= 0.80, r
        assert r["dead_frac"] <= 0.15, r
    assert "expl.var" in stdout and "rec.zero" in stdout


def test_quickstart_ce_loss_recovered_is_at_least_90_percent(quickstart):
    _, summary, _ = quickstart
    for r in summary["validation"]["saes"]:
        assert r["ce_recovered_zero"] >= 0.90, r
        assert r["ce_clean"] < r["ce_sae"] < r["ce_zero"]


def test_quickstart_writes_loadable_saes_and_plots(quickstart):
    out, summary, _ = quickstart
    assert (out / "density.png").stat().st_size > 1000
    for layer, path in zip((0, 1), summary["saes"].values()):
        sae = load_sae(path)
        assert sae.cfg.hook_name == f"blocks.{layer}.attn.hook_z"
        assert sae.cfg.model_name == "attnsae-stdlib-2l" and sae.d_in == 256
