"""The Circuit Explorer's API (attnsae.serve.app) on the reference model, through FastAPI's TestClient: each endpoint's
numbers against the library called directly, the exactness identities through the API, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from attnsae.attribution import dfa as library_dfa, logit_effect, rdfa as library_rdfa
from attnsae.attribution.inputs import tokenize
from attnsae.models.hooks import capture
from attnsae.evals.splice import splice_saes
from attnsae.serve.app import create_app
from attnsae.serve.schemas import MAX_BODY_BYTES, MAX_PROMPT_CHARS
from conftest import fake_dashboards, random_sae

PROMPT = "import os\nimport sys\n\ndef main(argv):\n    path = os.path.join(argv[0], 'x')\n    return os.path.join("


@pytest.fixture(scope="module")
def saes(ref_model):
    return {0: random_sae(ref_model, 0, d_sae=96, seed=1, architecture="topk", k=12),
            1: random_sae(ref_model, 1, d_sae=128, seed=2)}


@pytest.fixture(scope="module")
def site(tmp_path_factory, saes):
    """A minimal dashboards folder with one data file, and a file and a symlink outside it."""
    root = Path(fake_dashboards(tmp_path_factory.mktemp("dash"), saes))
    (root / "data").mkdir()
    (root / "data" / "x.js").write_text("1;")
    (root.parent / "secret.txt").write_text("outside")
    (root / "link.txt").symlink_to(root.parent / "secret.txt")
    return root


@pytest.fixture(scope="module")
def client(ref_model, saes, site):
    return TestClient(create_app(ref_model, saes, dashboard=site), base_url="http://127.0.0.1")


def post(client, name: str, **body) -> dict:
    r = client.post(f"/api/{name}", json={"prompt": PROMPT, **body})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def direct(ref_model, saes):
    """The prompt's tokens, hook_z per layer and each SAE's pre-activations and activations, computed directly."""
    tokens, _ = tokenize(ref_model, PROMPT)
    z = capture(ref_model, tokens, [f"blocks.{l}.attn.hook_z" for l in saes])
    out = {"tokens": tokens}
    with torch.no_grad():
        for l, s in saes.items():
            x = z[f"blocks.{l}.attn.hook_z"][0].flatten(1)
            out[l] = (s.pre_acts(x), s.encode(x))
    return out


def an_active(features: dict, layer: int, position: int = 20) -> int:
    return next(e["feature"] for e in features["rows"][position] if e["layer"] == layer)


def test_features_are_the_saes_activations_ranked(client, direct, saes):
    out = post(client, "features", k=5)
    assert out["tokens"] == direct["tokens"][0].tolist() and out["layers"] == [0, 1]
    for t, row in enumerate(out["rows"]):
        for l in saes:
            acts = direct[l][1][t]
            mine = [e for e in row if e["layer"] == l]
            assert [e["act"] for e in mine] == sorted((e["act"] for e in mine), reverse=True)
            assert len(mine) == min(5, int((acts > 0).sum()))
            for e in mine:
                assert e["act"] == pytest.approx(float(acts[e["feature"]]), rel=1e-5, abs=1e-6)
            if mine:  # the k largest
                kth = float(acts.topk(len(mine)).values[-1])
                assert mine[-1]["act"] >= kth - 1e-5 * abs(kth) - 1e-6  # direct: fused attention, to fp32 rounding
    by_dfa = post(client, "features", order="dfa", k=3, layers=[1])
    assert {e["layer"] for row in by_dfa["rows"] for e in row} == {1}
    assert all([abs(e["dfa"]) for e in row] == sorted((abs(e["dfa"]) for e in row), reverse=True)
               for row in by_dfa["rows"])
    assert all(e["family"] in ("induction", "short-range", "long-range") for row in out["rows"] for e in row)


def test_dfa_through_the_api_sums_to_the_preactivation_and_matches_the_library(client, direct, ref_model, saes):
    feats = post(client, "features")
    for layer in (0, 1):
        j, t = an_active(feats, layer), 20
        d = post(client, "dfa", layer=layer, feature=j, position=t)
        terms = torch.tensor(d["terms"])  # [S, H]
        assert terms.shape == (len(feats["tokens"]), ref_model.cfg.n_heads)
        assert d["pre_act"] == pytest.approx(float(direct[layer][0][t, j]), rel=1e-5, abs=1e-6)
        assert sum(d["by_src"]) + d["bias"] == pytest.approx(d["pre_act"], rel=1e-4, abs=1e-5)
        assert sum(d["by_head"]) + d["bias"] == pytest.approx(d["pre_act"], rel=1e-4, abs=1e-5)
        assert d["identity_error"] < 1e-4
        torch.testing.assert_close(terms.sum(1), torch.tensor(d["by_src"]))
        ref = library_dfa(ref_model, saes[layer], direct["tokens"], j, dest=t)
        i = ref.find(0, t, j)
        torch.testing.assert_close(torch.tensor(d["by_src"]), ref.by_src[i], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(torch.tensor(d["by_head"]), ref.by_head[i], rtol=1e-4, atol=1e-5)
        assert d["bias"] == pytest.approx(float(ref.bias[i]), rel=1e-5, abs=1e-6)


def test_rdfa_expands_lazily_and_every_level_closes(client, ref_model, saes, direct):
    feats = post(client, "features")
    j, t = an_active(feats, 1), 20
    root = post(client, "rdfa", node={"kind": "feature", "layer": 1, "position": t, "feature": j, "coef": 1},
                top_k=4)
    assert root["node"]["value"] == pytest.approx(float(direct[1][0][t, j]), rel=1e-5, abs=1e-6)
    ref = library_rdfa(ref_model, saes[1], direct["tokens"][0], j, t, depth=1, top_k=4, upstream_saes=[saes[0]])
    assert [c["value"] for c in root["children"]] == pytest.approx([c.value for c in ref.root.children], rel=1e-5)
    frontier, expanded = [root], 0
    while frontier:  # two levels below the root: head-source terms, then their components and layer-0 features
        level = frontier.pop()
        total = sum(c["value"] for c in level["children"]) + sum(level["remainders"].values())
        assert total == pytest.approx(level["node"]["value"], rel=1e-4, abs=1e-6)
        assert level["relative_residual"] < 1e-4
        expanded += 1
        if level["node"]["kind"] == "feature" and level["node"]["layer"] == 1:
            frontier += [post(client, "rdfa", node=c["ref"], top_k=4) for c in level["children"] if c["expandable"]]
    assert expanded == 1 + len(root["children"])
    kids = post(client, "rdfa", node=root["children"][0]["ref"], top_k=4)
    assert {c["kind"] for c in kids["children"]} >= {"component"}
    assert any(c["kind"] == "feature" and c["layer"] == 0 and c["expandable"] for c in kids["children"])
    folded = post(client, "rdfa", node=root["children"][0]["ref"], top_k=4, threshold=0.5)
    assert "below_threshold" in folded["remainders"] and len(folded["children"]) < len(kids["children"])
    assert folded["relative_residual"] < 1e-4


def test_effect_attention_and_predictions_match_the_model(client, ref_model, saes, direct):
    feats = post(client, "features")
    j, t = an_active(feats, 1), 20
    e = post(client, "effect", layer=1, feature=j, position=t, k=5)
    lib = logit_effect(ref_model, saes[1], j, k=5)
    assert e["logit_effect"]["top_tokens"] == lib.top_tokens
    with torch.no_grad():
        logits = ref_model(direct["tokens"], return_type="logits")[0, t].float()
    assert [p["token"] for p in e["predictions"]] == logits.topk(5).indices.tolist()
    assert feats["predictions"][t][0]["token"] == int(logits.argmax())
    a = post(client, "attention", layer=1, head=3, dest=t)
    pattern = capture(ref_model, direct["tokens"], ["blocks.1.attn.hook_pattern"])["blocks.1.attn.hook_pattern"]
    torch.testing.assert_close(torch.tensor(a["weights"]), pattern[0, 3, t])


def test_intervention_moves_only_later_logits_and_matches_a_direct_splice(client, ref_model, saes, direct):
    feats = post(client, "features")
    j, t = an_active(feats, 0), 20
    same = post(client, "intervene", layer=0, feature=j, position=t, scale=1.0, at=t)
    assert same["max_abs_logit_change"] < 1e-4 and not same["downstream"]
    before_t = post(client, "intervene", layer=0, feature=j, position=t, scale=0.0, at=t - 1)
    assert before_t["max_abs_logit_change"] < 1e-4  # causal: an edit at t cannot reach t - 1
    iv = post(client, "intervene", layer=0, feature=j, position=t, scale=0.0, at=t + 3, logit_tokens=[" os", " sys"])
    assert iv["max_abs_logit_change"] > 1e-3 and iv["logit_diff"]["before"] != iv["logit_diff"]["after"]
    assert iv["downstream"] and all(d["layer"] == 1 and d["position"] >= t for d in iv["downstream"])

    def edit(layer, acts):
        acts = acts.clone()
        if layer == 0:
            acts[:, t, j] = 0
        return acts

    with torch.no_grad(), splice_saes(ref_model, saes, with_error=True, edit=edit):
        logits = ref_model(direct["tokens"], return_type="logits")[0, t + 3].float()
    os_, sys_ = (ref_model.tokenizer(s, add_special_tokens=False)["input_ids"][0] for s in (" os", " sys"))
    assert iv["logit_diff"]["after"] == pytest.approx(float(logits[os_] - logits[sys_]), rel=1e-4, abs=1e-4)
    for d in iv["downstream"]:
        assert d["before"] == pytest.approx(float(direct[1][1][d["position"], d["feature"]]), rel=1e-5, abs=1e-6)


def test_compare_gives_feature_differences_per_position(client, direct):
    other = PROMPT.replace("os", "io")
    c = post(client, "compare", other=other, k=4)
    a, b = post(client, "features", k=200), client.post("/api/features", json={"prompt": other, "k": 200}).json()
    assert c["n_positions"] == min(len(a["tokens"]), len(b["tokens"]))
    assert not c["rows"][0]  # BOS: the same in both
    t = next(i for i, r in enumerate(c["rows"]) if r)
    for d in c["rows"][t]:
        acts = {p: {(e["layer"], e["feature"]): e["act"] for e in f["rows"][t]} for p, f in (("a", a), ("b", b))}
        assert d["delta"] == pytest.approx(acts["b"].get((d["layer"], d["feature"]), 0.0)
                                           - acts["a"].get((d["layer"], d["feature"]), 0.0), abs=1e-5)


# ------------------------------------------------------------------------------------------------ refusals

@pytest.mark.parametrize("body, status, needle", [
    ({"prompt": "x " * 400}, 400, "reads at most 256"),
    ({"prompt": "x", "layer": 5, "feature": 0, "position": 0}, 400, "layer 5 has no SAE"),
    ({"prompt": "x", "layer": 1, "feature": 500, "position": 0}, 400, "feature 500 is out of range"),
    ({"prompt": "x", "layer": 1, "feature": 0, "position": 9}, 400, "position 9 is out of range"),
    ({"prompt": "", "layer": 1, "feature": 0, "position": 0}, 422, "prompt"),
    ({"prompt": "x", "layer": "one", "feature": 0, "position": 0}, 422, "layer"),
    ({"prompt": "x", "layer": 1, "feature": 0, "position": 0, "extra": 1}, 422, "extra"),
    ({"prompt": "x" * (MAX_PROMPT_CHARS + 1), "layer": 1, "feature": 0, "position": 0}, 422, "prompt"),
])
def test_bad_requests_get_a_4xx_with_one_line(client, body, status, needle):
    endpoint = "features" if set(body) == {"prompt"} else "dfa"
    r = client.post(f"/api/{endpoint}", json=body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and needle in detail


def test_oversize_and_unsized_bodies_are_refused(client):
    r = client.post("/api/features", content=b'{"prompt": "' + b"x" * MAX_BODY_BYTES + b'"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and "bytes" in r.json()["detail"]
    r = client.post("/api/features", content=iter([b'{"prompt": "x"}']), headers={"content-type": "application/json"})
    assert r.status_code == 411


@pytest.mark.parametrize("path", [
    "/static/..%2f..%2fcli.py", "/static/%2e%2e/app.py", "/static/../serve/app.py", "/static/dashboards.js",
    "/dashboard/..%2fsecret.txt", "/dashboard/%2e%2e/secret.txt", "/dashboard/link.txt",
    "/dashboard/data/../../secret.txt",
    "/dashboard//etc/passwd", "/dashboard/%2fetc%2fpasswd",
])
def test_no_path_leaves_the_served_folders(client, path):
    r = client.get(path)
    assert r.status_code == 404 and "outside" not in r.text and "root:" not in r.text


def test_page_assets_and_dashboard_files_are_served_with_a_same_origin_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and "explorer.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("explorer.js", "explorer.css", "common.css"):
        assert client.get(f"/static/{name}").status_code == 200
    assert client.get("/dashboard/data/x.js").text == "1;"
    info = client.get("/api/info").json()
    assert info["dashboard"] and [s["dashboard"] for s in info["saes"]] == ["L0", "L1"]
    assert "/api/rdfa" in client.get("/openapi.json").json()["paths"]


# ------------------------------------------------------------------------------------------------ bounds (issue 28)

def test_repeated_layers_are_listed_once_and_identical_prompts_do_not_differ(client):
    one = post(client, "features", k=8, layers=[1])
    many = post(client, "features", k=8, layers=[1] * 1000)  # a 3 kB request may not cost 1000 layers of work
    assert many["rows"] == one["rows"] and many["layers"] == one["layers"] == [1]
    same = post(client, "compare", other=PROMPT, k=10)  # identical prompts: nothing beyond float rounding
    assert not any(same["rows"]) and set(same["tolerance"]) == {"0", "1"}
    assert all(0 < t < 1e-3 for t in same["tolerance"].values())


def test_no_cdn_docs_a_nul_byte_and_a_long_input_get_short_answers(client):
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200
    r = client.get("/dashboard/a%00b.html")
    assert r.status_code == 404 and len(r.json()["detail"]) < 400
    r = client.post("/api/intervene", json={"prompt": PROMPT, "layer": 1, "feature": 0, "position": 3,
                                            "logit_tokens": ["x" * 50_000, "y"]})
    assert r.status_code == 400 and len(r.json()["detail"]) < 400 and "more characters" in r.json()["detail"]


def test_an_rdfa_source_after_its_destination_is_refused(client):
    node = {"kind": "head_source", "layer": 1, "position": 3, "feature": 0, "coef": 1, "head": 0, "source": 5}
    r = client.post("/api/rdfa", json={"prompt": PROMPT, "node": node})
    assert r.status_code == 400 and "later position" in r.json()["detail"]


def test_a_logit_difference_of_newline_tokens_given_as_ids_is_exact(client, ref_model):
    """Python's predictions are newline-plus-indent tokens, which a text box cannot hold: the page sends ids."""
    tok = ref_model.tokenizer
    a, b = (tok("\n" + pad, add_special_tokens=False)["input_ids"] for pad in ("    ", ""))
    assert len(a) == len(b) == 1 and a != b
    r = post(client, "intervene", layer=1, feature=0, position=3, scale=1.0, logit_tokens=[a[0], b[0]])
    logits = ref_model(ref_model.to_tokens(PROMPT))[0, -1]
    assert r["logit_diff"]["tokens"] == [tok.decode(a), tok.decode(b)]
    assert r["logit_diff"]["before"] == pytest.approx(float(logits[a[0]] - logits[b[0]]), abs=1e-3)
    bad = client.post("/api/intervene", json={"prompt": PROMPT, "layer": 1, "feature": 0, "position": 3,
                                              "logit_tokens": [10**9, 1]})
    assert bad.status_code == 400 and "out of range" in bad.json()["detail"]
