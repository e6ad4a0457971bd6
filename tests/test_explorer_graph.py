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

    feats = page.locator('#graph-svg circle.gnode[data-kind="feature"]')
    if feats.count():
        f = feats.first.get_attribute("data-id")  # L0/123@5
        feats.first.click()
        page.wait_for_selector("#dfa-heatmap")
        assert page.text_content("#feature-name") == f.split("@")[0]

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
    assert_clean(page, server)
