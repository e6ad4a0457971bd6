"""The explorer's Graph view (explorer-graph.js, POST /api/graph) in headless Chromium against the real server: the
graph of the prompt is drawn with the nodes and edges the API returns, a click on a feature opens its DFA panel and
on a head its attention row, shift-clicked nodes group into a supernode that the URL keeps, and the page stays
offline and error-free. Skips without a browser unless ATTNSAE_REQUIRE_BROWSER=1 (tests/browser.py)."""

from __future__ import annotations

import pytest

from browser import require_browser
from conftest import random_sae
from test_explorer_browser import assert_clean, run_prompt

pytestmark = pytest.mark.integration

PROMPT = "result = compute_matrix(alpha, gamma)\nprint(result)\nresult = compute_matrix(alpha,"


@pytest.fixture(scope="module")
def server(request):
    """The explorer with a random SAE on layer 0 only, so the graph has features (layer 0) and heads (layer 1)."""
    require_browser()
    from attnsae.serve.app import create_app, serve_in_thread

    ref_model = request.getfixturevalue("ref_model")
    saes = {0: random_sae(ref_model, 0, d_sae=96, seed=1, architecture="topk", k=12)}
    url, stop = serve_in_thread(create_app(ref_model, saes))
    yield url.rstrip("/")
    stop()


def test_the_graph_is_drawn_clicked_grouped_and_kept_in_the_url(browser, server):
    import json
    import urllib.request

    page = run_prompt(browser, server, PROMPT)
    page.click("#graph-run")
    page.wait_for_selector("#graph-svg circle.gnode")
    body = json.dumps({"prompt": PROMPT, "target": None, "mlp": "leaf", "node_threshold": 0.8,
                       "edge_threshold": 0.98}).encode()
    req = urllib.request.Request(server + "/api/graph", body, {"Content-Type": "application/json"})
    data = json.loads(urllib.request.urlopen(req).read())
    ids = page.evaluate("[...document.querySelectorAll('#graph-svg circle.gnode')].map(c => c.dataset.id)")
    assert sorted(ids) == sorted(data["nodes"]["id"])
    n_edges = page.evaluate("document.querySelectorAll('#graph-svg line.gedge').length")
    assert n_edges == min(500, len(data["edges"]["weight"])) > 0
    assert "replacement" in page.text_content("#graph-summary") and "g=1" in page.evaluate("location.hash")
    kinds = set(page.evaluate("[...document.querySelectorAll('#graph-svg circle.gnode')].map(c => c.dataset.kind)"))
    assert {"head", "target", "token"} <= kinds

    head = page.locator('#graph-svg circle.gnode[data-kind="head"]').first
    hid = head.get_attribute("data-id")  # e.g. L1.H1@32: clicking shows that head's attention from its destination
    head.click()
    layer, rest = hid[1:].split(".H")
    assert page.input_value("#attn-layer") == layer and page.input_value("#attn-head") == rest.split("@")[0]

    into = data["nodes"]["kind"]
    kinds_of = dict(zip(data["nodes"]["id"], into))
    edge = next(k for k, t in enumerate(data["edges"]["target"]) if kinds_of[t] in ("head", "feature"))
    src, dst = data["edges"]["source"][edge], data["edges"]["target"][edge]
    page.dispatch_event(f'#graph-svg line.gedge[data-source="{src}"][data-target="{dst}"]', "click")
    page.wait_for_selector('#graph-qk .qk-side[data-side="key"]')  # why that edge's head attended
    assert "score" in page.text_content("#graph-qk") and dst in page.text_content("#graph-qk")

    nodes = page.locator("#graph-svg circle.gnode")
    first, second = nodes.nth(0).get_attribute("data-id"), nodes.nth(1).get_attribute("data-id")
    nodes.nth(0).click(modifiers=["Shift"])
    nodes.nth(1).click(modifiers=["Shift"])
    page.click("#graph-group")
    page.wait_for_selector("#graph-svg rect.gsuper")
    assert "sn=" in page.evaluate("location.hash")
    page.reload()
    page.wait_for_selector("#graph-svg rect.gsuper")  # the URL brings the graph and its group back
    title = page.text_content("#graph-svg rect.gsuper title")
    assert first in title and second in title
    page.click("#graph-ungroup")
    assert page.locator("#graph-svg rect.gsuper").count() == 0

    # unpruned (both thresholds 1) the random SAE's features are in the graph: a click opens the feature's DFA
    page.fill("#graph-node-threshold", "1")
    page.fill("#graph-edge-threshold", "1")
    page.click("#graph-run")
    page.wait_for_selector('#graph-svg circle.gnode[data-kind="feature"]')
    feature = page.locator('#graph-svg circle.gnode[data-kind="feature"]').first
    f = feature.get_attribute("data-id")  # L0/123@5
    feature.dispatch_event("click")
    page.wait_for_selector("#dfa-heatmap")
    assert page.text_content("#feature-name") == f.split("@")[0]
    assert_clean(page, server)


def test_graph_api_answers_and_refuses_in_one_line(server):
    import json
    import urllib.error
    import urllib.request

    def post(path: str, body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(server + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    code, g = post("/api/graph", {"prompt": PROMPT, "mlp": "linear", "node_threshold": 1, "edge_threshold": 1})
    assert code == 200 and g["mlp_mode"] == "linear" and g["pruning"]["nodes"] == g["pruning"]["nodes_unpruned"]
    from attnsae.graph.files import closure_of
    worst, n = closure_of(g)
    assert n > 10 and worst < 1e-5  # the unpruned answer closes from itself
    into_target = next(s for s, t in zip(g["edges"]["source"], g["edges"]["target"]) if t == "target")
    for path, body, needle in [
            ("/api/graph", {"prompt": PROMPT, "target": ["w1 w2 w3 w4"]}, "not one"),
            ("/api/graph", {"prompt": PROMPT, "node_threshold": 0}, "node_threshold"),
            ("/api/qk", {"prompt": PROMPT, "source": into_target, "dest": "target"}, "not an edge into a feature"),
            ("/api/qk", {"prompt": PROMPT, "source": "nowhere", "dest": "target"}, "no node")]:
        code, err = post(path, body)
        assert code in (400, 422) and needle in err["detail"] and "\n" not in err["detail"], (path, err)
