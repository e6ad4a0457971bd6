"""The explorer's feature cards, feature search and labels (attnsae.serve.cards, views/labels.py) through the API on
the reference model: a card read from a real dashboards folder, one from the server's scan (checked against the SAE
run directly), the logit effect of the library, search by label, name and token, labels that outlive the app and are
written atomically, and the refusals."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from attnsae.activations import harvest_z
from attnsae.attribution import logit_effect
from attnsae.corpus import load_corpus
from attnsae.errors import AttnsaeError
from attnsae.serve.app import create_app
from conftest import assert_one_line_error, fake_dashboards, random_sae, random_tokens, run_cli

PROMPT = "def area(self):\n    return self.width * self.height\n"


@pytest.fixture(scope="module")
def saes(ref_model):
    """A TopK SAE of 48 features on layer 0, a ReLU SAE of 64 on layer 1."""
    return {layer: random_sae(ref_model, layer, d_sae=d_sae, seed=3 + layer, architecture=arch, k=k)
            for layer, d_sae, arch, k in ((0, 48, "topk", 8), (1, 64, "relu", None))}


@pytest.fixture(scope="module")
def site(tmp_path_factory, ref_model, saes):
    """A dashboards folder the library writes for these SAEs, from 16 random contexts of 32 tokens."""
    from attnsae.jobs.reading import read_features
    from attnsae.studies.examples import DashboardConfig
    from attnsae.studies.scan import ScanConfig

    out = tmp_path_factory.mktemp("cards") / "dash"
    cfg = DashboardConfig(scan=ScanConfig(n_top=6, n_sample=16), per_band=1)
    read_features(ref_model, list(saes.values()), random_tokens(16, 32, seed=5), out, cfg,
                  corpus={"source": "random", "split": "test"}, progress=False)
    return out


def client_of(app) -> TestClient:
    return TestClient(app, base_url="http://127.0.0.1")


def ok(r) -> dict:
    assert r.status_code == 200, r.text
    return r.json()


def live_feature(site: Path, name: str) -> dict:
    """A feature of the folder's SAE ``name`` that fired, with top examples."""
    from attnsae.views.dashboards import read_feature, read_summary

    density = read_summary(site, name)["density"]
    return read_feature(site, name, next(i for i, d in enumerate(density) if d >= 3 / (16 * 31)))


def test_a_card_from_a_dashboards_folder_is_the_folders_feature_with_the_librarys_logit_effect(
        ref_model, saes, site, tmp_path):
    from attnsae.views.dashboards import read_vocab

    feature = live_feature(site, "L1")
    c = client_of(create_app(ref_model, saes, dashboard=site, labels=tmp_path / "labels.json"))
    card = ok(c.post("/api/card", json={"layer": 1, "feature": feature["i"]}))
    assert card["source"]["kind"] == "dashboard" and card["source"]["n_tokens"] == 16 * 31
    assert "496 tokens of random (test)" in card["source"]["text"]
    assert (card["family"], card["density"], card["n_fired"]) == (feature["family"], feature["density"],
                                                                 feature["n_fired"])
    top = feature["groups"][0]["examples"]
    assert len(card["contexts"]) == min(5, len(top))
    vocab = read_vocab(site)
    for shown, ex in zip(card["contexts"], top):
        assert (shown["act"], shown["dest"]) == (ex["act"], ex["dest"])
        for seg, raw in zip(shown["segments"], ex["segments"]):
            assert (seg["tokens"], seg["acts"]) == (raw["tokens"], raw["acts"])
            assert seg["strs"] == [vocab[t] for t in raw["tokens"]]
    assert [t["token"] for t in card["top_tokens"]] == [t for t, _ in feature["top_tokens"]]
    le = logit_effect(ref_model, saes[1], feature["i"], 10)  # the one definition, exactly
    assert [t["token"] for t in card["logits"]["top"]] == le.top_tokens
    assert [t["value"] for t in card["logits"]["bottom"]] == pytest.approx(le.bottom_values)
    assert [t["token"] for t in card["logits"]["top"]][:5] == [t for t, _ in feature["logits"]["pos"]][:5]


@pytest.fixture(scope="module")
def scanned(ref_model, saes, tmp_path_factory, site):
    """An app without dashboards (cards scan 1,024 stdlib tokens), counting the scans it runs."""
    import attnsae.serve.cards as cards

    calls = []
    real = cards.card_scan

    def counting(model, saes_, tokens):
        calls.append(len(saes_))
        return real(model, saes_, tokens)

    patch = pytest.MonkeyPatch()
    patch.setattr(cards, "card_scan", counting)
    yield client_of(create_app(ref_model, saes, labels=tmp_path_factory.mktemp("l") / "labels.json",
                               card_tokens=1024)), calls
    patch.undo()


def test_a_card_without_dashboards_comes_from_one_scan_per_layer_of_the_corpus(ref_model, saes, scanned):
    c, calls = scanned
    tokens = torch.from_numpy(load_corpus(ref_model.tokenizer, "stdlib", "validation", 128, True,
                                          max_tokens=1024, n_ctx=256, progress=False).tokens[:8]).long()
    with torch.no_grad():
        acts = saes[1].encode(harvest_z(ref_model, tokens, [1], drop_bos=True)[1])  # [8 * 127, d_sae]
    fired = (acts > 0).sum(0)
    f = int(torch.argmax((fired > 0) * (fired < 400) * fired))  # a feature that fires, not everywhere
    card = ok(c.post("/api/card", json={"layer": 1, "feature": f}))
    assert card["source"] == {"kind": "scan", "n_tokens": 8 * 127,
                              "text": "a scan of 1,016 tokens of stdlib (validation), run when first asked"}
    assert card["n_fired"] == int(fired[f]) and card["density"] == pytest.approx(int(fired[f]) / (8 * 127))
    assert card["contexts"][0]["act"] == pytest.approx(float(acts[:, f].max()), rel=2e-3)
    assert [x["act"] for x in card["contexts"]] == sorted((x["act"] for x in card["contexts"]), reverse=True)
    assert card["family"] in ("induction", "short-range", "long-range", "unclear")
    assert "top 5 activations in the scan" in card["family_source"]
    for ctx in card["contexts"]:  # the marked token is where the feature fired, inside a segment
        seg = next(s for s in ctx["segments"] if s["start"] <= ctx["dest"] < s["start"] + len(s["tokens"]))
        assert seg["acts"][ctx["dest"] - seg["start"]] > 0
    assert ok(c.post("/api/card", json={"layer": 1, "feature": (f + 1) % 64}))["source"]["kind"] == "scan"
    ok(c.post("/api/card", json={"layer": 0, "feature": 0}))
    assert calls == [1, 1]  # once per layer, on first request
    never = int(torch.argmin(fired))
    if fired[never] == 0:
        dead = ok(c.post("/api/card", json={"layer": 1, "feature": never}))
        assert dead["family"] == "dead" and dead["contexts"] == [] and dead["n_fired"] == 0


def test_a_dashboards_folder_without_feature_data_falls_back_to_the_scan_and_says_so(ref_model, saes, tmp_path):
    site = fake_dashboards(tmp_path / "fake", saes)  # index.html only
    c = client_of(create_app(ref_model, saes, dashboard=site, labels=tmp_path / "labels.json", card_tokens=512))
    card = ok(c.post("/api/card", json={"layer": 0, "feature": 1}))
    assert card["source"]["kind"] == "scan" and "no readable data for L0" in card["source"]["text"]
    assert card["family"] in ("induction", "short-range", "long-range", "unclear", "dead")


def test_search_finds_features_by_name_label_and_top_logit_token_and_says_where_they_fire(
        ref_model, saes, site, tmp_path):
    from attnsae.attribution.inputs import tokenize
    from attnsae.attribution.rdfa import RDFATracer

    c = client_of(create_app(ref_model, saes, dashboard=site, labels=tmp_path / "labels.json"))
    le = logit_effect(ref_model, saes[0], 7, 10)
    word = le.top_strs[0]
    out = ok(c.post("/api/search", json={"query": word, "prompt": PROMPT, "k": 50}))
    assert le.top_tokens[0] in [t["token"] for t in out["tokens"]]
    hit = next(r for r in out["results"] if (r["layer"], r["feature"]) == (0, 7))
    assert any(w.startswith("top logit #1") for w in hit["why"]) and hit["family"] in (
        "induction", "short-range", "long-range", "unclear", "dead")
    tokens, _ = tokenize(ref_model, PROMPT)
    acts = RDFATracer(ref_model, saes[1], tokens[0], {0: saes[0]}).saes[0].act[:, 7]  # [S]
    on = (acts[1:] > 0).nonzero().flatten() + 1
    assert (hit["fires"] or {}).get("positions", []) == on.tolist()[:32]
    ok(c.post("/api/label", json={"layer": 1, "feature": 5, "label": "Opening Bracket"}))
    by_label = ok(c.post("/api/search", json={"query": "bracket"}))
    assert by_label["results"][0] | {"why": None} == {"layer": 1, "feature": 5, "label": "Opening Bracket",
                                                       "family": by_label["results"][0]["family"], "why": None,
                                                       "rank": 1, "fires": None}
    from attnsae.views.dashboards import read_summary, read_vocab

    column = read_summary(site, "L1")["top_token"]  # the folder's commonest top-activating token of each feature
    f = next(i for i, t in enumerate(column) if t >= 0)
    word = read_vocab(site)[column[f]]
    found = ok(c.post("/api/search", json={"query": word, "layers": [1, 1], "k": 50}))["results"]
    assert f"top-activating token #1: {word!r}" in next(r for r in found if r["feature"] == f)["why"]
    assert {r["layer"] for r in found} == {1}
    assert ok(c.post("/api/search", json={"query": "L1/63"}))["results"][0]["why"] == ["its name"]
    assert ok(c.post("/api/search", json={"query": "L1/64"}))["results"] == []  # out of range: no such feature
    assert len(ok(c.post("/api/search", json={"query": " the", "k": 3}))["results"]) <= 3
    assert ok(c.post("/api/search", json={"query": "zzz nothing like it"}))["n_found"] == 0


def test_labels_outlive_the_app_and_the_file_is_replaced_atomically(ref_model, saes, tmp_path, monkeypatch):
    path = tmp_path / "labels.json"
    c = client_of(create_app(ref_model, saes, labels=path))
    assert ok(c.get("/api/labels"))["labels"] == []
    kept = ok(c.post("/api/label", json={"layer": 0, "feature": 3, "label": "  a\n  <b>name</b>\t "}))
    assert kept["label"] == "a <b>name</b>" and kept["path"] == str(path)
    ok(c.post("/api/label", json={"layer": 1, "feature": 9, "label": "later"}))
    ok(c.post("/api/label", json={"layer": 1, "feature": 9, "label": ""}))  # empty removes
    before = path.read_text()
    saved = json.loads(before)
    assert saved["format"] == "attnsae-labels" and saved["version"] == 1
    assert [(v["layer"], v["labels"]) for v in saved["saes"].values()] == [(0, {"3": "a <b>name</b>"})]

    again = client_of(create_app(ref_model, saes, labels=path))  # a new app (a restart) reads them back
    assert ok(again.get("/api/labels"))["labels"] == [{"layer": 0, "feature": 3, "label": "a <b>name</b>"}]
    assert ok(again.post("/api/card", json={"layer": 0, "feature": 3}))["label"] == "a <b>name</b>"
    other = {0: saes[0], 1: random_sae(ref_model, 1, d_sae=64, seed=99)}  # layer 1 retrained: no labels there
    assert ok(client_of(create_app(ref_model, other, labels=path)).get("/api/labels"))["labels"] == \
        [{"layer": 0, "feature": 3, "label": "a <b>name</b>"}]

    import attnsae.io

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(attnsae.io.os, "replace", full)  # the disk fills as the new file would replace the old
    r = again.post("/api/label", json={"layer": 0, "feature": 4, "label": "lost"})
    assert r.status_code == 400 and "could not write" in r.json()["detail"]
    assert path.read_text() == before and sorted(os.listdir(tmp_path)) == ["labels.json"]  # no temporary left


def test_a_file_attnsae_did_not_write_is_never_taken_as_labels(ref_model, saes, tmp_path):
    for name, text in {"notes.json": '{"a": 1}', "text.txt": "hello", "wrong.json": json.dumps(
            {"format": "attnsae-labels", "version": 1, "saes": {"x": {"layer": 0, "labels": {}}}})}.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(AttnsaeError, match=f"--labels {path} is not a labels file attnsae wrote"):
            create_app(ref_model, saes, labels=path)
        assert path.read_text() == text
    with pytest.raises(AttnsaeError, match="not a file"):
        create_app(ref_model, saes, labels=tmp_path)


@pytest.mark.parametrize("url, body, status, needle", [
    ("card", {"layer": 5, "feature": 0}, 400, "layer 5 has no SAE"),
    ("card", {"layer": 1, "feature": 64}, 400, "feature 64 is out of range"),
    ("label", {"layer": 0, "feature": 48, "label": "x"}, 400, "feature 48 is out of range"),
    ("label", {"layer": 0, "feature": 1, "label": "x" * 121}, 422, "label: String should have at most 120"),
    ("label", {"layer": 0, "feature": 1}, 422, "label: Field required"),
    ("search", {"query": ""}, 422, "query: String should have at least 1"),
    ("search", {"query": "a", "layers": list(range(65))}, 422, "layers: List should have at most 64"),
    ("search", {"query": "a", "layers": [3]}, 400, "layer 3 has no SAE"),
    ("search", {"query": "a", "k": 51}, 422, "k: Input should be less than or equal to 50"),
])
def test_bad_card_search_and_label_requests_get_one_line(ref_model, saes, tmp_path, url, body, status, needle):
    r = client_of(create_app(ref_model, saes, labels=tmp_path / "labels.json")).post(f"/api/{url}", json=body)
    assert r.status_code == status and needle in r.json()["detail"], r.text
    assert not (tmp_path / "labels.json").exists()


@pytest.mark.integration
def test_explore_refuses_a_labels_file_it_did_not_write_before_loading_the_model(tmp_path):
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    proc = run_cli("explore", "--sae", str(tmp_path / "missing"), "--labels", str(notes))
    assert_one_line_error(proc, f"--labels {notes} is not a labels file attnsae wrote")
    assert notes.read_text() == '{"mine": true}'
