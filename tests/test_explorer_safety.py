"""The Circuit Explorer's guards (attnsae.serve.guards, bounds in attnsae.serve.schemas): only requests addressed to
this machine's loopback names or the ``--host`` given are served (DNS rebinding), an answer too large is refused
before the work with a line saying what to lower, no answer passes MAX_RESPONSE_BYTES, a graph stops building past
MAX_GRAPH_EDGES, a request waits a bounded time for the model (503 with Retry-After), and /openapi.json documents
every status each endpoint answers with, refusals as ``{"detail": str}``."""

from __future__ import annotations

import socket
import time

import pytest
from fastapi.testclient import TestClient

from attnsae.serve import schemas as S
from attnsae.serve.app import create_app, serve_in_thread
from conftest import random_sae

PROMPT = "import os\nimport sys\n\ndef main(argv):\n    return os.path.join(argv[0], 'x')\n"
LOCAL = "http://127.0.0.1"


@pytest.fixture(scope="module")
def saes(ref_model):
    """ReLU SAEs wide enough that about 500 features fire per token: k is what bounds a features answer."""
    return {0: random_sae(ref_model, 0, d_sae=1024, seed=1), 1: random_sae(ref_model, 1, d_sae=1024, seed=2)}


@pytest.fixture(scope="module")
def app(ref_model, saes):
    return create_app(ref_model, saes, max_sessions=3, host="explorer.lan")


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app, base_url=LOCAL)


def full_prompt(model) -> str:
    """A prompt of the model's whole context (n_ctx tokens with BOS)."""
    ids = model.tokenizer(PROMPT * 40, add_special_tokens=False)["input_ids"][: model.cfg.n_ctx - 1]
    return model.tokenizer.decode(ids)


def one_line(r, status: int, *needles: str) -> str:
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and len(detail) < 400, detail
    assert all(n in detail for n in needles), detail
    return detail


# ------------------------------------------------------------------------------------------------ Host header

@pytest.mark.parametrize("base", ["http://127.0.0.1", "http://localhost:8000", "http://[::1]:8000",
                                  "http://LOCALHOST", "http://explorer.lan:9000"])
def test_local_names_and_the_given_host_are_served(app, base):
    assert TestClient(app, base_url=base).get("/api/info").status_code == 200


@pytest.mark.parametrize("base", ["http://evil.example", "http://evil.example:8000", "http://127.0.0.1.evil.example",
                                  "http://testserver", "http://localhost.evil.example"])
def test_any_other_host_is_refused_with_the_hosts_served(app, base):
    client = TestClient(app, base_url=base)
    for r in (client.get("/api/info"), client.get("/"), client.post("/api/features", json={"prompt": "x"})):
        one_line(r, 400, "127.0.0.1, localhost, [::1], explorer.lan", "DNS rebinding")


def raw_get(url: str, host: str | None) -> tuple[int, bytes]:
    """GET /api/info from the server at ``url`` over a plain socket with the ``Host`` header given (None: none)."""
    hostport = url.split("//")[1].rstrip("/")
    addr, port = hostport.rsplit(":", 1)
    with socket.create_connection((addr, int(port)), timeout=30) as sock:
        head = f"Host: {host}\r\n" if host is not None else ""
        sock.sendall(f"GET /api/info HTTP/1.1\r\n{head}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def test_a_real_server_refuses_a_forged_host_and_serves_localhost(ref_model, saes):
    """Through uvicorn and a socket, as a DNS-rebound page's request would arrive: the connection is to 127.0.0.1,
    the Host header names the attacker's domain."""
    url, stop = serve_in_thread(create_app(ref_model, saes))
    try:
        port = url.rstrip("/").rsplit(":", 1)[1]
        status, body = raw_get(url, f"evil.example:{port}")
        assert status == 400 and b"DNS rebinding" in body and b"evil.example" in body
        assert raw_get(url, f"localhost:{port}")[0] == 200
        assert raw_get(url, f"127.0.0.1:{port}")[0] == 200
    finally:
        stop()


def test_attnsae_explore_serves_the_host_it_binds(tmp_path, monkeypatch):
    """`attnsae explore --host ADDR` gives ADDR to the app: requests naming it are served, others still refused."""
    import uvicorn

    from attnsae.cli import main
    from conftest import saved_sae

    served = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: served.update(app=self.config.app))
    try:
        socket.create_server(("127.0.0.2", 0)).close()
    except OSError:
        pytest.skip("127.0.0.2 cannot be bound here")
    assert main(["explore", "--sae", saved_sae(tmp_path / "sae", layer=0), "--host", "127.0.0.2", "--port", "0"]) == 0
    assert TestClient(served["app"], base_url="http://127.0.0.2:8000").get("/api/info").status_code == 200
    assert TestClient(served["app"], base_url="http://evil.example").get("/api/info").status_code == 400


# ------------------------------------------------------------------------------------------------ answer sizes

def test_a_features_request_that_returned_12_mb_is_refused_saying_what_to_lower(client, ref_model):
    """At full context, k=200 over both layers of SAEs that fire ~500 features per token used to answer 102,400
    entries (12 MB); now the size is counted first (tokens x layers x k) and the request refused: lower k."""
    prompt = full_prompt(ref_model)
    n = ref_model.cfg.n_ctx
    detail = one_line(client.post("/api/features", json={"prompt": prompt, "k": 200}), 400,
                      f"{n} tokens x 2 layers x k=200", f"lower k to {S.MAX_ANSWER_ITEMS // (2 * n)}")
    assert "102,400 entries" in detail
    ok = client.post("/api/features", json={"prompt": prompt, "k": S.MAX_ANSWER_ITEMS // (2 * n)})
    assert ok.status_code == 200 and len(ok.content) <= S.MAX_RESPONSE_BYTES
    assert sum(map(len, ok.json()["rows"])) <= S.MAX_ANSWER_ITEMS
    assert client.post("/api/features", json={"prompt": prompt, "k": 200, "layers": [1, 1]}).status_code == 200


def test_a_compare_that_would_list_too_much_is_refused(client, ref_model):
    prompt = full_prompt(ref_model)
    one_line(client.post("/api/compare", json={"prompt": prompt, "other": prompt.replace("os", "io"), "k": 200}), 400,
             "positions x 2 layers x k=200", "lower k")


def test_no_answer_passes_max_response_bytes(client, monkeypatch):
    """The backstop: an answer rendered past MAX_RESPONSE_BYTES is refused, not sent."""
    assert client.post("/api/attention", json={"prompt": PROMPT, "layer": 1, "head": 0, "dest": 3}).status_code == 200
    monkeypatch.setattr(S, "MAX_RESPONSE_BYTES", 100)
    one_line(client.post("/api/attention", json={"prompt": PROMPT, "layer": 1, "head": 0, "dest": 3}), 400,
             "MB, over the limit", "shorten the prompt")


@pytest.fixture(scope="module")
def small(ref_model):
    """A TopK SAE on layer 0 only (12 features per token; layer 1 split into heads): graphs of a few thousand edges."""
    return {0: random_sae(ref_model, 0, d_sae=96, seed=1, architecture="topk", k=12)}


def test_a_graph_is_bounded_while_built_and_when_answered(ref_model, small, monkeypatch):
    client = TestClient(create_app(ref_model, small), base_url=LOCAL)
    body = {"prompt": PROMPT, "node_threshold": 1.0, "edge_threshold": 1.0}
    whole = client.post("/api/graph", json=body).json()["pruning"]
    monkeypatch.setattr(S, "MAX_ANSWER_ITEMS", whole["nodes"] + whole["edges"] - 1)
    one_line(client.post("/api/graph", json=body), 400, "nodes + edges kept", "lower node_threshold")
    assert whole["edges_unpruned"] > 1000
    monkeypatch.setattr(S, "MAX_GRAPH_EDGES", 1000)
    one_line(client.post("/api/graph", json={"prompt": PROMPT, "mlp": "linear"}), 400, "over the 1,000 allowed",
             "shorten the prompt")


@pytest.mark.parametrize("mlp", ["leaf", "linear"])
def test_a_graph_is_counted_exactly_before_it_is_built(ref_model, small, mlp):
    """count_edges gives build_from's edge count from the node counts alone, for a logit target and a feature target;
    build_from(max_edges=...) builds at exactly that bound and refuses one below it, before any work."""
    from attnsae.attribution.inputs import tokenize
    from attnsae.errors import AttnsaeError
    from attnsae.graph.build import build_from, count_edges
    from attnsae.graph.frozen import FrozenPrompt
    from attnsae.graph.target import TargetSpec, resolve

    fp = FrozenPrompt(ref_model, small, tokenize(ref_model, PROMPT)[0][0], mlp)
    t = 12
    feature = int(fp.saes[0].active[t].nonzero()[0, 0])
    for spec in (TargetSpec(), TargetSpec(feature=(0, feature, t))):
        tgt = resolve(spec, fp, ref_model.tokenizer)
        n = count_edges(ref_model, fp, tgt)
        assert build_from(ref_model, fp, tgt, progress=False, max_edges=n).n_edges == n
        start = time.perf_counter()
        with pytest.raises(AttnsaeError, match=f"would have {n:,} edges, over the {n - 1:,} allowed"):
            build_from(ref_model, fp, tgt, progress=False, max_edges=n - 1)
        assert time.perf_counter() - start < 1


@pytest.mark.integration  # builds and loads a tiny GPT-NeoX (12 s)
def test_a_parallel_block_graph_is_counted_exactly(tmp_path):
    """GPT-NeoX's MLP reads the stream before attention: its linear MLP nodes read fewer parts (count_edges' other
    branch)."""
    import torch

    import tiny_archs
    from attnsae.graph.build import build_from, count_edges
    from attnsae.graph.frozen import FrozenPrompt
    from attnsae.graph.target import TargetSpec, resolve
    from attnsae.models import load_model

    model = load_model(tiny_archs.build("gpt_neox", tmp_path))
    tokens = torch.randint(100, 500, (16,), generator=torch.Generator().manual_seed(1))
    fp = FrozenPrompt(model, {1: random_sae(model, 1, d_sae=32)}, tokens, "linear")
    assert fp.mlp_reads_mid == [False] * fp.n_layers
    tgt = resolve(TargetSpec(), fp, model.tokenizer)
    assert count_edges(model, fp, tgt) == build_from(model, fp, tgt, progress=False).n_edges


def test_the_graph_of_a_layer_0_feature_with_linear_mlps_is_answered(ref_model, small):
    """No layer lies below the target, so there is nothing to differentiate: this was a 500."""
    client = TestClient(create_app(ref_model, small), base_url=LOCAL)
    f = client.post("/api/features", json={"prompt": PROMPT}).json()["rows"][12][0]["feature"]
    r = client.post("/api/graph", json={"prompt": PROMPT, "mlp": "linear", "target": [f"0/{f}@12"]})
    assert r.status_code == 200 and r.json()["target"]["kind"] == "feature", r.text


# ------------------------------------------------------------------------------------------------ the model lock

def test_a_request_waits_a_bounded_time_for_the_model_then_gets_503(ref_model, saes):
    app = create_app(ref_model, saes, lock_wait_s=0.05)
    client = TestClient(app, base_url=LOCAL)
    body = {"prompt": PROMPT, "layer": 1, "head": 0, "dest": 2}
    with app.state.model_lock.held():  # another request holds the model
        t = time.perf_counter()
        r = client.post("/api/attention", json=body)
        waited = time.perf_counter() - t
        assert client.get("/api/info").status_code == 200  # what needs no model is still answered
    one_line(r, 503, "busy with another request")
    assert r.headers["retry-after"] == str(S.RETRY_AFTER_S) and waited < 5
    assert client.post("/api/attention", json=body).status_code == 200  # released: served again


# ------------------------------------------------------------------------------------------------ /openapi.json

def test_openapi_documents_every_status_with_a_string_detail(client):
    spec = client.get("/openapi.json").json()
    error = spec["components"]["schemas"]["ErrorBody"]
    assert error["properties"]["detail"]["type"] == "string" and "HTTPValidationError" not in spec["components"][
        "schemas"]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            want = {"200", "400"} | ({"411", "413", "422", "503"} if method == "post" else set())
            assert set(op["responses"]) == want, (path, method, sorted(op["responses"]))
            for code in want - {"200"}:
                ref = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorBody"), (path, code, ref)
            if method == "post":
                assert "Retry-After" in op["responses"]["503"]["headers"]
