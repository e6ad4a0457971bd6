"""The Circuit Explorer's page (views/assets/explorer*.{html,js,css}) in headless Chromium against the real server
(attnsae.serve.app on the reference model with two random SAEs, served by uvicorn in a thread): prompt → feature
chips → DFA heatmap and identity → RDFA expansion → ablation moves the logits → the URL restores the view; keyboard,
attention shading, comparison, export, the error bar and the narrow layout. Every page must log no error and request
nothing outside the server's origin. Skips without a browser unless ATTNSAE_REQUIRE_BROWSER=1 (tests/browser.py)."""

from __future__ import annotations

import json
import re

import pytest

from browser import require_browser, select_chip
from conftest import fake_dashboards, random_sae

pytestmark = pytest.mark.integration

PROMPT = ("import os\nimport sys\n\ndef main(argv):\n    path = os.path.join(argv[0], 'x')\n"
          "    return os.path.join(path, sys.argv[1])\n")


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    """The explorer on 127.0.0.1:<free port> with random SAEs on layers 0 and 1 and a minimal dashboards folder
    (family labels, so chips carry data-family and link to /dashboard/)."""
    require_browser()  # skip before loading the model when there is no browser
    from attnsae.serve.app import create_app, serve_in_thread

    ref_model = request.getfixturevalue("ref_model")

    saes = {0: random_sae(ref_model, 0, d_sae=96, seed=1, architecture="topk", k=12),
            1: random_sae(ref_model, 1, d_sae=128, seed=2)}
    site = fake_dashboards(tmp_path_factory.mktemp("explorer_dash"), saes)
    url, stop = serve_in_thread(create_app(ref_model, saes, dashboard=site))
    yield url.rstrip("/")
    stop()


def assert_clean(page, base: str, allow_http_errors: int = 0) -> None:
    """No console error, warning or exception (besides `allow_http_errors` failed loads the test caused on purpose),
    and every request went to the server's own origin."""
    errors = [m for m in page.errors() if "Failed to load resource" not in m["text"]]
    failed = [m for m in page.errors() if "Failed to load resource" in m["text"]]
    assert errors == [], errors
    assert len(failed) == allow_http_errors, failed
    assert page.requests and all(u == base or u.startswith(base + "/") for u in page.requests), page.requests


def run_prompt(browser, base: str, prompt: str = PROMPT):
    page = browser.open(base + "/")
    page.wait_for_selector("#attn-head option", state="attached")  # /api/info answered
    page.fill("#prompt", prompt)
    page.press("#prompt", "Control+Enter")
    page.wait_for_selector("#tokens .chip")
    return page


def numbers(page, *ids: str) -> list[float]:
    return [float(page.text_content(i).replace("−", "-")) for i in ids]


def test_prompt_dfa_rdfa_ablation_and_the_url_restores_the_view(browser, server):
    page = run_prompt(browser, server)
    # one row per token (BOS hidden), but only the visible ones exist: the list is virtualised
    n_tokens = page.evaluate("document.querySelectorAll('#tokens .row').length")
    assert 5 < n_tokens < 45, n_tokens
    assert page.text_content("#token-count").startswith("46 tokens")
    assert page.locator('#tokens .row[data-position="0"]').count() == 0  # BOS hidden by default
    row = page.locator('#tokens .row[data-position="9"]')
    assert "main" in row.locator(".tok").text_content() and row.locator(".pred").text_content().startswith("→")
    chip = row.locator('.chip[data-layer="0"]').first
    assert re.fullmatch(r"L0/\d+\S*\s*[\d.−e]+", chip.text_content().strip()) and chip.get_attribute("data-family")
    feature = chip.get_attribute("data-feature")

    select_chip(page, chip)  # → DFA, RDFA, effect
    try:
        page.wait_for_selector("#dfa-heatmap")
    except Exception:  # say what the page showed instead
        state = page.evaluate("({hash: location.hash, name: document.getElementById('feature-name')?.textContent, "
                              "error: document.getElementById('error')?.textContent, "
                              "canvas: !!document.getElementById('dfa-heatmap')})")
        raise AssertionError(f"no DFA heatmap after the click: {state}; console: {page.errors()}") from None
    assert page.text_content("#feature-name") == f"L0/{feature}"
    assert page.get_attribute("#feature-head a.dash-link", "href") == f"/dashboard/index.html#L0/{feature}"
    assert page.evaluate("document.getElementById('dfa-heatmap').width") > 100
    assert "pre-activation = DFA total + bias" in page.text_content("#identity")
    pre, dfa, bias = numbers(page, "#identity-pre", "#identity-dfa", "#identity-bias")
    assert abs(pre - dfa - bias) < 1e-3 * max(1.0, abs(pre)) and "✓" in page.text_content("#identity-error")
    assert page.locator("#dfa-card .by-head .bar-row").count() == 8

    page.wait_for_selector("#rdfa-tree .rdfa-node.root .rdfa-closure")
    first = page.locator('#rdfa-tree .rdfa-node[data-kind="head_source"]').first
    first.locator(".expand").click()  # one level: the head-source term split into residual components
    page.wait_for_selector('#rdfa-tree .rdfa-node[data-kind="head_source"][aria-expanded="true"] '
                           '.rdfa-node[data-kind="component"]')
    assert first.locator(".rdfa-closure").count() == 1

    # two logit tokens picked from the effect card's predictions (click: first, shift-click: second), then the
    # feature zeroed at its position through the edit list
    page.wait_for_selector("#effect-predictions button.pick")
    picks = page.locator("#effect-predictions button.pick")
    picks.nth(0).click()
    picks.nth(1).click(modifiers=["Shift"])
    assert page.input_value("#logit-a") and page.input_value("#logit-b")
    page.click("#add-feature-edit")
    assert page.get_attribute("#edit-list .edit-row", "data-op") == "zero"
    page.fill("#intervene-at", "9")
    page.press("#intervene-at", "Tab")
    page.click("#intervene-run")
    page.wait_for_selector("#logit-diff-after")
    before, after = numbers(page, "#logit-diff-before", "#logit-diff-after")
    assert before != after
    assert page.locator("#preds-before tbody tr").count() == 10 and page.locator("#downstream tbody tr").count() > 0

    # the URL holds the view: a fresh page from it shows the same selection, expansion and intervention
    url = page.url
    assert f"f=0/{feature}@9" in url and "iv=1" in url and f"ed=f0.{feature}@9z" in url and "at=9" in url
    assert "ta=%23" in url and "tb=%23" in url  # picked tokens travel as ids ("#199"): newlines survive
    assert_clean(page, server)
    again = browser.open(url)
    again.wait_for_selector('#tokens .chip[aria-pressed="true"]')
    sel = again.locator('#tokens .chip[aria-pressed="true"]')
    assert (sel.get_attribute("data-layer"), sel.get_attribute("data-feature"), sel.get_attribute("data-position")) \
        == ("0", feature, "9")
    assert again.text_content("#feature-name") == f"L0/{feature}"
    again.wait_for_selector('#rdfa-tree .rdfa-node[aria-expanded="true"] .rdfa-node[data-kind="component"]')
    again.wait_for_selector("#logit-diff-after")
    assert numbers(again, "#logit-diff-before", "#logit-diff-after") == [before, after]
    assert again.input_value("#prompt") == PROMPT
    assert_clean(again, server)


def test_a_click_spanning_a_scroll_frame_selects_its_chip(browser, server):
    """The list renders only the rows in view (plus a margin). A scroll that moves that window keeps the rows still in
    it as they are, so a chip pressed before a scroll frame re-renders the list is the chip released, and the click
    selects it (a list rebuilt whole lost one click in seven under load: the press and the release hit two nodes)."""
    page = run_prompt(browser, server)
    chip = page.locator('#tokens .row[data-position="5"] .chip').first
    layer, feature = chip.get_attribute("data-layer"), chip.get_attribute("data-feature")
    node = chip.element_handle()
    b = chip.bounding_box()
    last_row = "Math.max(...[...document.querySelectorAll('#tokens .row')].map((r) => +r.ariaRowIndex))"
    shown = page.evaluate(last_row)
    page.mouse.move(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2)
    page.mouse.down()
    scroll = "(by) => { const box = document.getElementById('tokens'); " \
             "box.scrollTop += by * parseFloat(getComputedStyle(box).getPropertyValue('--row-h')); }"
    page.evaluate(scroll, 1)  # one row down: the window grows a row at the bottom...
    page.wait_for(f"{last_row} > {shown}")
    page.evaluate(scroll, -1)  # ...and loses it again: two re-renders while the button is down
    page.wait_for(f"{last_row} === {shown}")
    assert node.evaluate("(n) => n.isConnected")  # the pressed chip itself, not a copy
    page.mouse.up()
    page.wait_for_selector(f'#feature-name[data-layer="{layer}"][data-feature="{feature}"]')
    assert node.get_attribute("aria-pressed") == "true"
    assert_clean(page, server)


def test_keyboard_attention_compare_export_errors_and_narrow_layout(browser, server):
    page = run_prompt(browser, server)
    # keyboard: focus the list, move down and right, Enter selects that chip
    page.focus("#tokens")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    page.wait_for_selector("#feature-name")
    focused = page.evaluate("[document.activeElement.dataset.position, document.activeElement.dataset.ci]")
    assert focused == ["2", "1"]
    assert page.get_attribute('#tokens .chip[data-position="2"][data-ci="1"]', "aria-pressed") == "true"

    # attention: layer 1 head 3, hovering a row shades its sources and names the top ones
    page.select_option("#attn-layer", "1")
    page.select_option("#attn-head", "3")
    page.hover('#tokens .row[data-position="6"] .tok')
    page.wait_for_selector('#tokens .row.attn-dest[data-position="6"]')
    shaded = page.evaluate("[...document.querySelectorAll('#tokens .tok.attn')]"
                           ".map(t => +t.closest('.row').dataset.position)")
    assert shaded and max(shaded) == 6
    assert page.text_content("#attn-strip").startswith("L1H3 from 6")
    assert "al=1" in page.url and "ah=3" in page.url

    # compare with a corrupted prompt
    page.fill("#compare-prompt", PROMPT.replace("path", "file"))
    page.click("#compare-run")
    page.wait_for_selector("#compare-result tr.tok-diff .dchip")
    assert "cmp=1" in page.url

    # export: the state and the answers shown, as a download (no request)
    n_requests = len(page.requests)
    with page.expect_download() as download:
        page.click("#export")
    data = json.loads(open(download.value.path(), encoding="utf-8").read())
    assert data["state"]["p"] == PROMPT and data["state"]["sel"]["position"] == 2
    assert {"features", "dfa", "rdfa", "effect", "compare", "attention"} <= set(data["responses"])
    assert len(page.requests) == n_requests

    # narrow: the cards stack under the token list
    page.set_viewport_size({"width": 420, "height": 800})
    left, right = page.locator("#left").bounding_box(), page.locator("#right").bounding_box()
    assert right["y"] >= left["y"] + left["height"] - 1 and right["width"] <= 420
    assert page.evaluate("document.documentElement.scrollWidth") <= 420

    # a prompt past the model's context: the server's one line in the error bar
    page.set_viewport_size({"width": 1280, "height": 800})
    page.fill("#prompt", "x " * 300)
    page.click("#run")
    page.wait_for_selector("#error:not([hidden])")
    assert page.get_attribute("#error", "role") == "alert"
    assert "256" in page.text_content("#error-text")
    page.click("#error-close")
    assert page.is_hidden("#error")
    assert_clean(page, server, allow_http_errors=1)


def test_two_edits_move_the_predictions_then_generate_clean_and_edited(browser, server):
    """A feature edit from the feature card and a head edit from the attention menu, one scaled: the edited run's
    predictions differ from the clean run's (both tables labelled), then both greedy continuations side by side;
    with a compared prompt of the same length the head can be patched from it."""
    page = run_prompt(browser, server)
    page.locator('#tokens .row[data-position="9"] .chip[data-layer="0"]').first.click()
    page.wait_for_selector("#add-feature-edit")
    page.click("#add-feature-edit")
    assert page.is_disabled("#add-head-edit")  # no attention layer chosen yet
    page.select_option("#attn-layer", "1")
    page.select_option("#attn-head", "1")
    page.click("#add-head-edit")
    rows = page.locator("#edit-list .edit-row")
    assert rows.count() == 2 and rows.nth(1).get_attribute("data-kind") == "head"
    assert rows.nth(1).locator(".edit-target").text_content() == "L1.H1"
    rows.nth(1).locator(".edit-op").select_option("scale")
    assert rows.nth(1).locator(".edit-value").is_visible()
    rows.nth(1).locator(".edit-value").fill("-2")
    rows.nth(1).locator(".edit-value").press("Tab")
    page.click("#intervene-run")
    page.wait_for_selector("#preds-after table")
    assert page.text_content("#preds-before h4").startswith("before: the clean run")
    assert page.text_content("#preds-after h4").startswith("after: the edited run")
    assert [h.strip() for h in page.locator("#preds-after th").all_text_contents()] == ["next token", "prob.", "logit",
                                                                                      "Δ pp"]
    before = page.locator("#preds-before td").all_text_contents()
    after = page.locator("#preds-after td").all_text_contents()
    assert before != after
    assert "ed=" in page.url and "h1.1@*s-2" in page.url

    page.fill("#generate-n", "5")
    page.press("#generate-n", "Tab")
    page.click("#generate-run")
    page.wait_for_selector("#gen-edited .gen-tok")
    assert page.locator("#gen-clean .gen-tok").count() == 5 and page.locator("#gen-edited .gen-tok").count() == 5
    assert page.text_content("#gen-clean h4").startswith("clean") and "2 edits" in page.text_content("#gen-edited h4")
    assert page.text_content("#gen-first-diff")

    # patch from B: the option opens once a second prompt is compared; a prompt of the same length aligns by position
    option = rows.nth(1).locator('.edit-op option[value="patch"]')
    assert option.is_disabled()
    page.fill("#compare-prompt", PROMPT.replace("path", "file"))
    page.click("#compare-run")
    page.wait_for_selector("#compare-result tr.tok-diff")
    assert not option.is_disabled()
    rows.nth(1).locator(".edit-op").select_option("patch")
    assert not rows.nth(1).locator(".edit-from").is_visible()  # every position: no position of B to name
    page.click("#intervene-run")
    page.wait_for_selector('#intervene-result[data-edits$="h1.1@*p"]')  # every position: position by position
    assert "L1.H1 at every position: patch from B" in page.text_content("#intervene-result .iv-summary")
    assert_clean(page, server)
