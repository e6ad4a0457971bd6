"""Dashboards end to end: every example is explained exactly, the CLI writes the whole site (and a Neuronpedia
export), and bad input gives one line, a non-zero exit and no partial output."""

import json
import sysconfig
from pathlib import Path

import pytest
import torch

from attnsae.attribution.dfa import attn_activations, dfa_reference
from attnsae.studies.examples import DashboardConfig, build_dashboards
from attnsae.sae.formats import save_sae
from attnsae.studies.scan import ScanConfig
from attnsae.views.dashboards import display_example
from conftest import assert_one_line_error, make_gpt2_dir, make_llama_dir, random_sae, run_cli


SHAPES = {  # model, contexts x positions, SAE architecture: 4 heads, 1 head and batch 1, GQA with TopK
    "gpt2": ("gpt2", 10, 20, "relu"),
    "one_head_batch1": ("gpt2_one_head", 1, 24, "relu"),
    "llama_gqa_topk": ("llama_gqa", 6, 16, "topk"),
}


@pytest.fixture(scope="module", params=list(SHAPES))
def dash(request, tiny_model, tmp_path_factory):
    from attnsae.models import load_model

    kind, n, S, arch = SHAPES[request.param]
    root = tmp_path_factory.mktemp("dash_models")
    model = {"gpt2": lambda: tiny_model,
             "gpt2_one_head": lambda: load_model(make_gpt2_dir(root / "one_head", n_head=1, n_embd=16)),
             "llama_gqa": lambda: load_model(make_llama_dir(root / "llama"))}[kind]()
    torch.manual_seed(3)
    tokens = torch.randint(1, 8192, (n, S))
    tokens[:, 0] = 0
    tokens[:, S // 2 + 2:S - 2] = tokens[:, 3:S // 2 - 1]  # some repeats
    k = 6 if arch == "topk" else None
    saes = [random_sae(model, 0, d_sae=24, seed=1, architecture=arch, k=k),
            random_sae(model, 1, d_sae=32, seed=2, architecture=arch, k=k)]
    cfg = DashboardConfig(scan=ScanConfig(n_top=4, n_sample=16), per_band=2, window_before=5, window_after=2)
    return model, tokens, saes, build_dashboards(model, saes, tokens, cfg, progress=False)


def test_every_example_is_the_activation_it_claims_and_its_dfa_sums_back(dash):
    model, tokens, saes, d = dash
    n_checked = 0
    for sae, block in zip(saes, d.bundle["saes"]):
        acts_L = attn_activations(model, tokens, block["layer"])
        z = acts_L.z.reshape(*tokens.shape, -1)
        pre = sae.pre_acts(z).detach()  # [batch, pos, d_sae]
        act = sae.encode(z).detach()
        by_src, _ = dfa_reference(acts_L, sae)  # [batch, dest, src, d_sae], naive
        for f in block["features"]:
            assert f["n_fired"] == int((act[:, 1:, f["i"]] > 0).sum())
            for g in f["groups"]:
                for ex in g["examples"]:
                    b, t, i = ex["ctx"], ex["dest"], f["i"]
                    assert ex["act"] == pytest.approx(float(act[b, t, i]), rel=1e-3, abs=1e-6)
                    assert ex["act"] > 0 and t >= 1
                    assert ex["dfa_total"] + ex["bias"] == pytest.approx(float(pre[b, t, i]), rel=1e-3, abs=1e-4)
                    ref = by_src[b, t, :, i]
                    assert ex["peak"] == int(ref[1:t + 1].argmax()) + 1
                    s0, n = ex["start"], len(ex["tokens"])  # raw: the positions the page may show
                    assert ex["tokens"].tolist() == tokens[b, s0:s0 + n].tolist() and s0 <= t < s0 + n
                    torch.testing.assert_close(torch.from_numpy(ex["dfa"]), ref[s0:s0 + n], rtol=1e-4, atol=1e-5)
                    torch.testing.assert_close(torch.from_numpy(ex["acts"]), act[b, s0:s0 + n, i], rtol=1e-4,
                                               atol=1e-5)
                    shown = display_example(ex, d.bundle["windows"])
                    for seg in shown["segments"]:
                        s0, n = seg["start"], len(seg["tokens"])
                        assert seg["tokens"] == tokens[b, s0:s0 + n].tolist()
                        # shown to 3 significant digits of the segment's largest magnitude
                        for got, want in ((seg["dfa"], ref[s0:s0 + n]), (seg["acts"], act[b, s0:s0 + n, i])):
                            assert torch.allclose(torch.tensor(got, dtype=torch.float), want,
                                                  atol=0.006 * float(want.abs().max()) + 1e-6)
                    assert any(s["start"] <= t < s["start"] + len(s["tokens"]) for s in shown["segments"])
                    n_checked += 1
    assert n_checked > 20


def test_bundle_features_carry_every_panel(dash):
    model, _, saes, d = dash
    for sae, block in zip(saes, d.bundle["saes"]):
        assert len(block["features"]) == sae.cfg.d_sae
        for f in block["features"]:
            assert sum(f["head_shares"]) == pytest.approx(1, abs=0.01)
            assert len(f["head_dfa"]) == len(f["head_shares"]) == model.cfg.n_heads
            assert len(f["logits"]["pos"]) == 10 and f["logits"]["pos"][0][1] >= f["logits"]["neg"][0][1]
            assert sum(f["logit_hist"]["counts"]) == model.cfg.d_vocab
            assert sum(f["hist"]["counts"]) == f["n_fired"]
            assert (f["family"] == "dead") == (f["n_fired"] == 0) == (f["groups"] == [])
        counts = d.counts[block["name"]]  # the families breakdown, per SAE
        labels = [f["family"] for f in block["features"]]
        assert counts["dead"] == labels.count("dead") and counts["live"] + counts["dead"] == sae.cfg.d_sae


def test_a_written_site_reads_back_feature_by_feature(dash, tmp_path):
    from attnsae.views.dashboards import display_feature, read_feature, read_vocab, write_dashboards

    _, _, _, d = dash
    write_dashboards(d.bundle, tmp_path)
    assert read_vocab(tmp_path) == list(d.bundle["vocab"])
    for block in d.bundle["saes"]:
        for f in block["features"]:  # JSON round trip: what the page shows is what was computed
            assert read_feature(tmp_path, block["name"], f["i"]) == json.loads(json.dumps(
                display_feature(f, d.bundle["windows"])))
    with pytest.raises(KeyError, match="no SAE named"):
        read_feature(tmp_path, "L99", 0)
    block = d.bundle["saes"][0]
    with pytest.raises(KeyError, match="has features 0.."):
        read_feature(tmp_path, block["name"], len(block["features"]))


def _stdlib_text(path: Path) -> Path:
    lib = Path(sysconfig.get_paths()["stdlib"])
    path.write_text("".join((lib / n).read_text() for n in ("bisect.py", "heapq.py", "textwrap.py")))
    return path


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory, tiny_model, tiny_model_dir):
    root = tmp_path_factory.mktemp("dash")
    paths = [str(save_sae(random_sae(tiny_model, layer, d_sae=32, seed=layer), root / f"sae{layer}"))
             for layer in (0, 1)]
    return root, paths, str(_stdlib_text(root / "text.txt"))


@pytest.mark.integration
def test_cli_writes_the_site_families_heads_and_neuronpedia_export(cli_inputs, tiny_model_dir):
    root, paths, text = cli_inputs
    out = root / "site"
    proc = run_cli("dashboard", "--sae", *paths, "--model", tiny_model_dir, "--source", text, "--split", "train",
                   "--context-size", "32", "--n-tokens", "640", "--out", str(out), "--neuronpedia", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"open {out / 'index.html'}" in proc.stdout and "heads polysemantic" in proc.stdout
    for name in ("index.html", "vocab.js", "heads.html", "heads.json", "families.json", "families.md",
                 "families.png", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["corpus"]["n_tokens"] == 20 * 31
    heads = json.loads((out / "heads.json").read_text())
    assert heads["n_heads"] == 8 and len(heads["heads"]) == 8
    crit = heads["criterion_params"]
    for h in heads["heads"]:  # each verdict follows from its score and the recorded threshold
        assert 1 <= len(h["features"]) <= 10 and h["verdict"] == ("monosemantic" if h["score"] >= crit["min_related"]
                                                              else "polysemantic"), h
    n_poly = sum(h["verdict"] == "polysemantic" for h in heads["heads"])
    assert heads["n_polysemantic"] == n_poly and heads["summary"] == f"{n_poly} of 8 heads polysemantic"
    fams = json.loads((out / "families.json").read_text())
    assert set(fams["thresholds"]) >= {"induction", "local", "far"} and "criterion" in fams
    for name in ("sae0", "sae1"):
        feats = [json.loads(l) for l in (out / "neuronpedia" / name / "features.jsonl").read_text().splitlines()]
        assert len(feats) == 32
        assert {"modelId", "layer", "index", "pos_str", "pos_values", "neg_str", "neg_values", "frac_nonzero",
                "freq_hist_data_bar_heights", "freq_hist_data_bar_values", "logits_hist_data_bar_heights",
                "decoder_weights_dist"} <= set(feats[0])
        acts = [json.loads(l) for l in (out / "neuronpedia" / name / "activations.jsonl").read_text().splitlines()]
        assert acts
        for a in acts:
            assert len(a["tokens"]) == len(a["values"]) == len(a["dfaValues"])
            assert a["maxValue"] == max(a["values"]) and 0 <= a["dfaTargetIndex"] < len(a["tokens"])
            assert a["values"][a["dfaTargetIndex"]] > 0 and a["dfaMaxValue"] == max(a["dfaValues"])
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary folders left behind


def _no_trace(root: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".site")]


@pytest.mark.integration
def test_sae_that_does_not_fit_the_model_is_one_line_and_writes_nothing(cli_inputs, tiny_model_dir, ref_model):
    root, paths, text = cli_inputs
    out = root / "site-bad-sae"
    proc = run_cli("dashboard", "--sae", paths[0], "--model", "attnsae-stdlib-2l", "--n-tokens", "256",
                   "--out", str(out))  # an SAE of the tiny model (d_in 32) on the reference model (d_in 256)
    assert_one_line_error(proc, "sae0", "model")
    _no_trace(root, out)


@pytest.mark.integration
def test_zero_tokens_is_one_line_and_writes_nothing(cli_inputs, tiny_model_dir):
    root, paths, text = cli_inputs
    out = root / "site-zero"
    proc = run_cli("dashboard", "--sae", paths[0], "--model", tiny_model_dir, "--n-tokens", "0", "--out", str(out))
    assert_one_line_error(proc, "--n-tokens", "positive")
    _no_trace(root, out)


@pytest.mark.integration
def test_unwritable_output_folder_is_one_line_and_writes_nothing(cli_inputs, tiny_model_dir):
    root, paths, text = cli_inputs
    blocker = root / "a-file"
    blocker.write_text("x")
    proc = run_cli("dashboard", "--sae", paths[0], "--model", tiny_model_dir, "--out", str(blocker / "site"))
    assert_one_line_error(proc, "cannot create output folder")
    assert blocker.read_text() == "x"


def test_a_failure_midway_leaves_the_previous_site_untouched(cli_inputs, tiny_model_dir, monkeypatch):
    """The site is written into a temporary folder and swapped in whole: an error inside leaves no trace."""
    from attnsae.io import write_marker
    from attnsae.models import load_model
    from attnsae.jobs.reading import read_features
    from attnsae.sae.formats import load_sae
    from attnsae.views import site

    root, paths, text = cli_inputs
    out = root / "site-keep"
    out.mkdir()
    (out / "old.txt").write_text("previous run")
    write_marker(out, "dashboard")  # an earlier dashboard's folder: the only kind a new one may replace

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(site, "write_dashboards", boom)
    model = load_model(tiny_model_dir)
    tokens = torch.randint(1, 8192, (4, 16))
    tokens[:, 0] = 0
    with pytest.raises(RuntimeError, match="disk full"):
        read_features(model, [load_sae(paths[0])], tokens, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".attnsae.json", "old.txt"]
    assert not [p for p in root.iterdir() if p.name.startswith(".site-keep")]
