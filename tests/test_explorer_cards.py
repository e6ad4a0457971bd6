"""The explorer's feature cards, search and labels in headless Chromium (explorer-cards.js against the real server
on the reference model, two random SAEs and no dashboards folder, so the cards come from the server's scan): a hover
opens a card, the keyboard opens it too, a label written under the selected feature shows on its chips and survives
a reload, and a search result selects the feature where it fires. Skips without a browser unless
ATTNSAE_REQUIRE_BROWSER=1 (tests/browser.py)."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from browser import require_browser, select_chip
from conftest import random_sae

pytestmark = pytest.mark.integration

PROMPT = "def area(self):\n    return self.width * self.height\n\ndef size(self):\n    return self.width\n"


def run_prompt(browser, base: str):
    """A new page on the explorer with PROMPT run and the labels read."""
    page = browser.open(base + "/#p=" + quote(PROMPT))
    page.wait_for_selector("#tokens .chip")
    page.wait_for("performance.getEntriesByType('resource').some((r) => r.name.endsWith('/api/labels'))")
    return page


def assert_clean(page, base: str) -> None:
    """Nothing logged as an error or a warning, and no request outside the server."""
    assert page.errors() == [], page.errors()
    assert all(u.startswith(base + "/") for u in page.requests), page.requests


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    """The explorer with random SAEs on layers 0 and 1, cards from a scan of 2,048 stdlib tokens, labels in a
    temporary file: (its URL, the labels file)."""
    require_browser()
    from attnsae.serve.app import create_app, serve_in_thread

    ref_model = request.getfixturevalue("ref_model")
    saes = {0: random_sae(ref_model, 0, d_sae=96, seed=1, architecture="topk", k=12),
            1: random_sae(ref_model, 1, d_sae=128, seed=2)}
    labels = tmp_path_factory.mktemp("labels") / "labels.json"
    url, stop = serve_in_thread(create_app(ref_model, saes, labels=labels, card_tokens=2048))
    yield url.rstrip("/"), labels
    stop()


def test_hovering_a_chip_shows_its_card_and_a_label_shows_on_its_chips_after_a_reload(browser, server):
    base, labels = server
    page = run_prompt(browser, base)
    chip = page.locator('#tokens .row[data-position="9"] .chip[data-layer="1"]').first
    feature = chip.get_attribute("data-feature")
    chip.hover()
    page.wait_for_selector("#fcard .fcard-context mark.fcard-peak", timeout=60_000)  # the first card runs the scan
    card = page.locator("#fcard")
    assert card.get_attribute("data-layer") == "1" and card.get_attribute("data-feature") == feature
    assert card.locator(".fcard-name").text_content() == f"L1/{feature}"
    assert card.locator(".fcard-context").count() >= 1
    assert card.locator(".fcard-logits-top li").count() == 10 and card.locator(".fcard-logits-bottom li").count() == 10
    assert "of tokens" in card.locator(".fcard-density").text_content()
    assert "a scan of 2,0" in card.locator(".fcard-source").text_content()
    assert card.locator(".fcard-family").get_attribute("data-family") in ("induction", "short-range", "long-range",
                                                                          "unclear")
    assert page.evaluate("getComputedStyle(document.getElementById('fcard')).pointerEvents") == "none"
    page.mouse.move(5, 5)  # away: the card goes
    page.wait_for_selector("#fcard", state="hidden")

    chip.click()  # the label field under the selected feature's name
    page.wait_for_selector("#feature-label")
    text = 'ends <b>a "call"</b>'
    page.fill("#feature-label", text)
    page.press("#feature-label", "Enter")
    page.wait_for_selector(f'#tokens .chip[data-layer="1"][data-feature="{feature}"] .flabel')
    shown = page.locator(f'#tokens .chip[data-layer="1"][data-feature="{feature}"] .flabel').first
    assert shown.text_content() == text  # as text: no element made of it
    assert page.locator("#feature-name + .flabel").text_content() == text
    assert page.evaluate("document.querySelectorAll('.flabel *').length") == 0
    saved = json.loads(labels.read_text())
    assert saved["format"] == "attnsae-labels"
    assert [list(e["labels"].values()) for e in saved["saes"].values()] == [[text]]
    assert_clean(page, base)

    again = run_prompt(browser, base)  # a new page: the labels come from the server
    labelled = f'#tokens .chip[data-layer="1"][data-feature="{feature}"] .flabel'
    again.wait_for_selector(labelled)
    assert again.locator(labelled).first.text_content() == text
    assert_clean(again, base)


def test_the_keyboard_opens_a_card_and_edits_a_label_there(browser, server):
    base, _ = server
    page = run_prompt(browser, base)
    page.focus("#tokens")
    page.keyboard.press("ArrowDown")
    page.wait_for_selector("#fcard:not([hidden]) .fcard-logits-top li", timeout=60_000)  # focus alone opens it
    focused = page.evaluate("[document.activeElement.dataset.layer, document.activeElement.dataset.feature]")
    assert [page.get_attribute("#fcard", "data-layer"), page.get_attribute("#fcard", "data-feature")] == focused
    page.keyboard.press("l")  # edit the label in the card
    page.wait_for_selector("#fcard.editing #fcard-label")
    assert page.evaluate("document.activeElement.id") == "fcard-label"
    page.keyboard.type("second label")
    page.keyboard.press("Enter")
    page.wait_for_selector(f'#tokens .chip[data-layer="{focused[0]}"][data-feature="{focused[1]}"] .flabel')
    page.keyboard.press("Escape")  # closes the card, focus back on the chip
    page.wait_for_selector("#fcard.editing", state="detached")
    assert page.evaluate("[document.activeElement.dataset.layer, document.activeElement.dataset.feature]") == focused
    assert_clean(page, base)


def test_search_by_label_selects_the_feature_where_it_fires(browser, server):
    base, _ = server
    page = run_prompt(browser, base)
    chip = page.locator('#tokens .row[data-position="12"] .chip').first
    layer, feature = chip.get_attribute("data-layer"), chip.get_attribute("data-feature")
    chip.click()
    page.fill("#feature-label", "zebra crossing")
    page.press("#feature-label", "Enter")
    page.wait_for_selector(f'#tokens .chip[data-feature="{feature}"][data-layer="{layer}"] .flabel')
    page.click('#tokens .row[data-position="5"] .chip')  # select something else
    page.fill("#feature-search-input", "ZEBRA")
    page.press("#feature-search-input", "Enter")
    hit = page.locator(f'#feature-search-results .search-hit[data-layer="{layer}"][data-feature="{feature}"]')
    hit.wait_for()
    assert "label" in hit.text_content() and "fires at" in hit.text_content()
    hit.click()
    page.wait_for_selector(f'#feature-name[data-layer="{layer}"][data-feature="{feature}"]')
    assert f"f={layer}/{feature}@" in page.url
    page.fill("#feature-search-input", "no such words anywhere")
    page.press("#feature-search-input", "Enter")
    page.wait_for("document.getElementById('feature-search-message').textContent.startsWith('no feature')")
    assert_clean(page, base)


def test_cards_open_from_the_selected_features_name_and_the_comparison(browser, server):
    base, _ = server
    page = run_prompt(browser, base)
    select_chip(page, page.locator('#tokens .row[data-position="9"] .chip').first)
    name = page.locator("#feature-name")
    name.hover()
    page.wait_for_selector("#fcard:not([hidden]) .fcard-logits-top li", timeout=60_000)
    assert [page.get_attribute("#fcard", a) for a in ("data-layer", "data-feature")] == \
        [name.get_attribute("data-layer"), name.get_attribute("data-feature")]
    page.fill("#compare-prompt", PROMPT.replace("width", "depth"))
    page.click("#compare-run")
    dchip = page.locator("#compare-result .dchip").first
    dchip.hover()
    page.wait_for(f"document.querySelector('#fcard:not([hidden])[data-feature=\"{dchip.get_attribute('data-feature')}\"]"
                  f"[data-layer=\"{dchip.get_attribute('data-layer')}\"] .fcard-name')", timeout=60)
    assert_clean(page, base)
