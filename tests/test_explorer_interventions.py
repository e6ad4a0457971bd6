"""The Circuit Explorer's interventions through its API (``/api/intervene``, ``/api/generate``) on the reference
model: several edits at once, patches from the compared prompt and greedy generation, each against the library
(attnsae.evals.interventions) or a TransformerLens hook called directly; the older one-feature body; the refusals."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from attnsae.attribution.inputs import tokenize
from attnsae.evals.interventions import Edit, generate, run_edited
from attnsae.serve.app import create_app
from attnsae.serve.schemas import MAX_EDITS, MAX_NEW_TOKENS
from conftest import random_sae

A = "def add(x, y):\n    return x + y\n\nprint(add(1, 2))\nprint(add("
B = "def add(y, x):\n    return y - x\n\nprint(add(3, 4))\nprint(add("


@pytest.fixture(scope="module")
def explorer(ref_model):
    """Random SAEs on both layers of the reference model (TopK at layer 0, ReLU at 1) and a client of their app."""
    saes = {0: random_sae(ref_model, 0, d_sae=64, seed=4, architecture="topk", k=8),
            1: random_sae(ref_model, 1, seed=5)}
    return saes, TestClient(create_app(ref_model, saes), base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def saes(explorer):
    return explorer[0]


@pytest.fixture(scope="module")
def client(explorer):
    return explorer[1]


@pytest.fixture(scope="module")
def tokens(ref_model):
    a, b = (tokenize(ref_model, p)[0][0] for p in (A, B))
    assert len(a) == len(b)  # the two prompts align position by position
    return a, b


def post(client, name: str, **body) -> dict:
    r = client.post(f"/api/{name}", json={"prompt": A, **body})
    assert r.status_code == 200, r.text
    return r.json()


def refused(client, name: str, status: int = 400, **body) -> str:
    r = client.post(f"/api/{name}", json={"prompt": A, **body})
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and len(detail) < 400
    return detail


def ids(ref_model, *strs: str) -> list[int]:
    out = [ref_model.tokenizer(s, add_special_tokens=False)["input_ids"] for s in strs]
    assert all(len(i) == 1 for i in out)
    return [i[0] for i in out]


def test_several_edits_at_once_are_the_library_s_edited_run(client, ref_model, saes, tokens):
    a, _ = tokens
    t = 9
    j = next(int(i) for i in saes[0].encode(
        ref_model.run_with_cache(a[None], names_filter=["blocks.0.attn.hook_z"])[1]["blocks.0.attn.hook_z"][0, t]
        .flatten()).nonzero())
    edits = [{"layer": 0, "feature": j, "position": t, "op": "zero"},
             {"layer": 1, "head": 1, "op": "scale", "value": 0.5},
             {"layer": 0, "head": 3, "position": 4, "op": "set", "value": 5.0},
             {"layer": 1, "feature": 7, "op": "scale", "value": 3.0}]
    pair = ids(ref_model, "x", "1")
    r = post(client, "intervene", edits=edits, logit_tokens=pair, k=100)
    lib = run_edited(ref_model, saes, a, [Edit(**e) for e in edits])
    last = len(a) - 1
    assert r["at"] == last and [e["kind"] for e in r["edits"]] == ["feature", "head", "head", "feature"]
    assert r["logit_diff"]["ids"] == pair and r["logit_diff"]["tokens"] == ["x", "1"]
    assert r["logit_diff"]["after"] == pytest.approx(float(lib.logits[last, pair[0]] - lib.logits[last, pair[1]]),
                                                     abs=1e-4)
    assert [p["token"] for p in r["after"]] == lib.logits[last].topk(100).indices.tolist()
    assert r["max_abs_logit_change"] > 1e-2 and r["logit_diff"]["before"] != r["logit_diff"]["after"]
    # the head edits at layer 0 move layer 0's own features (the SAE reads the edited hook_z)
    assert any(d["layer"] == 0 and d["position"] == 4 for d in r["downstream"]) and set(r["tolerance"]) == {"0", "1"}
    for d in r["downstream"]:
        assert d["after"] == pytest.approx(float(lib.feature_acts[d["layer"]][d["position"], d["feature"]]), abs=1e-5)


def test_the_older_one_feature_body_is_one_scale_edit(client):
    old = post(client, "intervene", layer=1, feature=5, position=None, scale=2.0, k=5)
    new = post(client, "intervene", edits=[{"layer": 1, "feature": 5, "op": "scale", "value": 2.0}], k=5)
    assert old == new and old["edits"][0]["op"] == "scale"


def test_a_head_patched_from_the_compared_prompt_runs_with_its_hook_z(client, ref_model, tokens):
    a, b = tokens
    zb = ref_model.run_with_cache(b[None], names_filter=["blocks.1.attn.hook_z"])[1]["blocks.1.attn.hook_z"]

    def patch(z, hook):
        z = z.clone()
        z[:, :, 1] = zb[:, :, 1]
        return z

    with torch.no_grad():
        expected = ref_model.run_with_hooks(a[None], fwd_hooks=[("blocks.1.attn.hook_z", patch)])[0, -1]
    pair = ids(ref_model, "1", "3")
    r = post(client, "intervene", edits=[{"layer": 1, "head": 1, "op": "patch"}], other=B, logit_tokens=pair)
    assert r["logit_diff"]["after"] == pytest.approx(float(expected[pair[0]] - expected[pair[1]]), abs=1e-4)
    assert abs(r["logit_diff"]["after"] - r["logit_diff"]["before"]) > 1e-2
    assert r["edits"][0]["from_position"] is None  # every position, position by position
    one = post(client, "intervene", edits=[{"layer": 1, "head": 1, "position": 20, "op": "patch"}], other=B)
    assert one["edits"][0]["from_position"] == 20
    # prompts of different lengths: only explicit positions
    longer = B + " 5, 6))"
    assert "differ in length" in refused(client, "intervene", edits=[{"layer": 1, "head": 1, "op": "patch"}],
                                         other=longer)
    ok = post(client, "intervene", edits=[{"layer": 1, "head": 1, "position": 3, "op": "patch", "from_position": 29}],
              other=longer)
    assert ok["edits"][0]["from_position"] == 29
    assert "no prompt B" in refused(client, "intervene", edits=[{"layer": 0, "feature": 1, "op": "patch"}])


def test_generate_gives_the_clean_and_the_edited_greedy_continuations(client, ref_model, saes, tokens):
    a, _ = tokens
    edits = [{"layer": 1, "head": h, "op": "zero"} for h in range(8)] + [{"layer": 0, "head": 2, "op": "scale",
                                                                          "value": 3.0}]
    r = post(client, "generate", edits=edits, n=6)
    theirs = ref_model.generate(a[None], max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False,
                                use_past_kv_cache=False)[0, len(a):]
    assert r["clean"]["tokens"] == theirs.tolist() and r["prompt_tokens"] == len(a)
    assert r["edited"]["tokens"] == generate(ref_model, a, 6, saes, [Edit(**e) for e in edits]).tolist()
    assert r["clean"]["strs"] == [ref_model.tokenizer.decode([t]) for t in r["clean"]["tokens"]]
    differ = [i for i, (c, e) in enumerate(zip(r["clean"]["tokens"], r["edited"]["tokens"])) if c != e]
    assert differ and r["first_difference"] == differ[0]  # the edits change the continuation
    same = post(client, "generate", n=3)
    assert same["clean"] == same["edited"] and same["first_difference"] is None
    assert same["clean"]["tokens"] == r["clean"]["tokens"][:3]  # a shorter clean run is the longer one's start
    assert "n:" in refused(client, "generate", 422, n=MAX_NEW_TOKENS + 1)


def test_bad_edits_are_one_line_refusals(client):
    bad = {
        "layer 5 has no SAE": {"layer": 5, "feature": 0},
        "layer 7 is out of range": {"layer": 7, "head": 0},
        "head 8 is out of range": {"layer": 0, "head": 8},
        "feature 64 is out of range": {"layer": 0, "feature": 64},
        "position 900 is out of range": {"layer": 0, "head": 1, "position": 900},
        "needs a finite value": {"layer": 0, "head": 1, "op": "set"},
        "exactly one": {"layer": 0},
    }
    for needle, edit in bad.items():
        for name in ("intervene", "generate"):
            assert needle in refused(client, name, edits=[edit]), (needle, name)
    assert "overlap" in refused(client, "intervene", edits=[{"layer": 0, "head": 1}, {"layer": 0, "head": 1,
                                                                                         "position": 2}])
    many = [{"layer": 0, "head": 0, "position": i} for i in range(MAX_EDITS + 1)]
    assert "edits" in refused(client, "intervene", 422, edits=many)
    assert "not both" in refused(client, "intervene", 422, layer=0, feature=1, edits=[{"layer": 0, "head": 1}])
    assert "op" in refused(client, "intervene", 422, edits=[{"layer": 0, "head": 1, "op": "mean"}])
