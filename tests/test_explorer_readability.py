"""The Circuit Explorer reads without guessing (issue 28, readability), in headless Chromium against the real server:
a legend for the family colours, every chip whole at 1440 × 900 with the default top 8, every number named (which
token a logit is of, the columns), the DFA heatmap's colour bar, axis titles and position numbers, attention
shading in a hue that is neither sign's, and the RDFA tree sorted by size with the terms it cannot expand listed apart,
each with its share and reason. Skips without a browser unless ATTNSAE_REQUIRE_BROWSER=1 (tests/browser.py)."""

from __future__ import annotations

import colorsys
import json
import re
import urllib.request

import pytest

from browser import require_browser
from conftest import fake_dashboards, random_sae
from test_explorer_browser import PROMPT, assert_clean

pytestmark = pytest.mark.integration

LONG = "def f(x):\n    return x + 1\n" * 20  # 221 tokens with BOS: longer than the heatmap has columns for


@pytest.fixture(scope="module")
def servers(request, tmp_path_factory):
    """Two explorers on the reference model with random SAEs on layers 0 and 1: "labelled" with a dashboards folder
    (families cycle induction / short-range / long-range), "plain" without (no family known)."""
    require_browser()
    from attnsae.serve.app import create_app, serve_in_thread

    ref_model = request.getfixturevalue("ref_model")
    saes = {0: random_sae(ref_model, 0, d_sae=96, seed=1, architecture="topk", k=12),
            1: random_sae(ref_model, 1, d_sae=128, seed=2)}
    site = fake_dashboards(tmp_path_factory.mktemp("readable_dash"), saes)
    labelled, stop_labelled = serve_in_thread(create_app(ref_model, saes, dashboard=site))
    plain, stop_plain = serve_in_thread(create_app(ref_model, saes))
    yield {"labelled": labelled.rstrip("/"), "plain": plain.rstrip("/")}
    stop_labelled()
    stop_plain()


def post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req).read())


def number(text: str) -> float:
    return float(text.strip().replace("−", "-").rstrip("%"))


def hue(css: str) -> float:
    """The hue in degrees of a CSS colour: rgb(...), rgba(...) or #rrggbb."""
    if css.startswith("#"):
        rgb = [int(css[i:i + 2], 16) for i in (1, 3, 5)]
    else:
        rgb = [float(x) for x in re.findall(r"[\d.]+", css)[:3]]
    return 360 * colorsys.rgb_to_hls(*(c / 255 for c in rgb))[0]


def hue_gap(a: float, b: float) -> float:
    return min(abs(a - b), 360 - abs(a - b))


def open_wide(browser, base: str, prompt: str = PROMPT):
    """The page at 1440 × 900 with the prompt run (default settings: top 8, both layers)."""
    page = browser.open(base + "/")
    page.set_viewport_size({"width": 1440, "height": 900})
    page.wait_for_selector("#attn-head option", state="attached")
    page.fill("#prompt", prompt)
    page.press("#prompt", "Control+Enter")
    page.wait_for_selector("#tokens .chip")
    return page


def row(page, position: int):
    """The token row at ``position``, scrolled into the (virtualised) list first; BOS hidden."""
    page.evaluate("p => { const box = document.getElementById('tokens');"
                  " box.scrollTop = (p - 1) * parseFloat(box.style.getPropertyValue('--row-h')); }", position)
    page.wait_for_selector(f'#tokens .row[data-position="{position}"] .chip')
    return page.locator(f'#tokens .row[data-position="{position}"]')


CUT_CHIPS = """() => {
  const cut = [];
  const box = document.getElementById('tokens').getBoundingClientRect();
  for (const row of document.querySelectorAll('#tokens .row:not(.probe)')) {
    const r = row.getBoundingClientRect();
    for (const lane of row.querySelectorAll('.lane')) {
      const l = lane.getBoundingClientRect(), style = getComputedStyle(lane);
      if (lane.scrollWidth > lane.clientWidth + 0.5 || lane.scrollHeight > lane.clientHeight + 0.5 ||
          (style.webkitMaskImage || 'none') !== 'none') cut.push(`lane ${row.dataset.position}/${lane.dataset.layer}`);
      for (const c of lane.querySelectorAll('.chip')) {
        const b = c.getBoundingClientRect();
        if (c.scrollWidth > c.clientWidth || b.left < l.left - 0.5 || b.right > l.right + 0.5 || b.top < r.top - 0.5 ||
            b.bottom > r.bottom + 0.5 || b.left < box.left || b.right > box.right) cut.push(c.textContent);
      }
    }
  }
  return [cut, document.querySelectorAll('#tokens .row:not(.probe) .chip').length];
}"""


def test_the_family_legend_names_the_colours_the_chips_use(browser, servers):
    page = open_wide(browser, servers["labelled"])
    legend = page.locator("#chip-legend .legend-chip")
    families = legend.evaluate_all("els => els.map(e => e.dataset.family)")
    assert families[:4] == ["induction", "short-range", "long-range", "unclear"]
    assert "short-range context" in page.text_content("#chip-legend")
    # each family's legend swatch has the colours of that family's chips
    colours = "el => [getComputedStyle(el).color, getComputedStyle(el).backgroundColor]"
    for family in ("induction", "short-range", "long-range"):
        chip = page.locator(f'#tokens .chip[data-family="{family}"]:not(.selected)').first
        swatch = page.locator(f'#chip-legend .legend-chip[data-family="{family}"]')
        assert chip.evaluate(colours) == swatch.evaluate(colours)
    assert "unlabelled" not in page.text_content("#chip-legend")
    assert_clean(page, servers["labelled"])

    plain = open_wide(browser, servers["plain"])  # no dashboards: every chip is unlabelled, and the legend says so
    swatches = plain.locator("#chip-legend .legend-chip").evaluate_all("els => els.map(e => e.textContent)")
    assert swatches == ["unlabelled"]
    assert "--dashboard" in plain.get_attribute("#chip-legend .legend-chip", "title")
    assert_clean(plain, servers["plain"])


def test_no_chip_is_cut_at_1440_with_the_default_top_8(browser, servers):
    page = open_wide(browser, servers["labelled"])
    assert page.input_value("#k") == "8"
    assert page.locator("#layer-filter input:checked").count() == 2
    cut, n = page.evaluate(CUT_CHIPS)
    assert n > 50 and cut == [], cut
    # rows hold every chip the server ranked: none hidden
    rows = post(servers["labelled"], "/api/features", {"prompt": PROMPT, "k": 8})["rows"]
    shown = page.evaluate("[...document.querySelectorAll('#tokens .row:not(.probe)')].map(r => "
                          "[+r.dataset.position, r.querySelectorAll('.chip').length])")
    assert all(count == len(rows[position]) for position, count in shown), shown
    # the end of the list, and another ranking (signed DFA values: longer chips)
    page.evaluate("document.getElementById('tokens').scrollTop = 1e9")
    page.wait_for_selector('#tokens .row[data-position="45"]')
    assert page.evaluate(CUT_CHIPS)[0] == []
    # the other rankings (signed values such as −0.0091: wider chips), and a resize, which lays the rows out again
    for order, name in (("dfa", "DFA"), ("logit", "logit")):
        page.set_viewport_size({"width": 1440, "height": 900})
        page.select_option("#order", order)
        page.wait_for_function(f"() => document.getElementById('features-head').textContent.includes('{name}')")
        for width in (1440, 1000, 420):
            page.set_viewport_size({"width": width, "height": 900})
            page.wait_for_timeout(150)
            for end in (0, 1e9):
                page.evaluate(f"document.getElementById('tokens').scrollTop = {end}")
                page.wait_for_timeout(100)
                cut, n = page.evaluate(CUT_CHIPS)
                assert n > 20 and cut == [], (order, width, end, cut)
    assert_clean(page, servers["labelled"])


def test_no_chip_is_cut_when_the_list_grows_a_scrollbar(browser, servers):
    """Headless Chromium hides scrollbars; a desktop one takes their width from the list once it scrolls, after the
    rows were laid out. A second Chromium that shows them: the rows still hold every chip."""
    from browser import FLAGS, Page

    shown = browser._browser.browser_type.launch(executable_path=browser.executable, args=FLAGS,
                                                 ignore_default_args=["--hide-scrollbars"])
    try:
        for width in (1440, 1280, 1100, 1000, 900):  # each a fresh page: its rows laid out before any scrollbar
            page = Page(shown.new_page(viewport={"width": width, "height": 900}))
            page.goto(servers["labelled"] + "/")
            page.wait_for_selector("#attn-head option", state="attached")
            page.fill("#prompt", PROMPT)
            page.press("#prompt", "Control+Enter")
            page.wait_for_selector("#tokens .chip")
            assert page.evaluate("(b => b.offsetWidth - b.clientWidth)(document.getElementById('tokens'))") > 0
            cut, n = page.evaluate(CUT_CHIPS)
            assert n > 20 and cut == [], (width, cut)
            page.close()
    finally:
        shown.close()


def test_every_number_is_named(browser, servers):
    page = open_wide(browser, servers["labelled"])
    base = servers["labelled"]
    assert "number = activation" in page.text_content("#features-head")
    features = post(base, "/api/features", {"prompt": PROMPT, "k": 8})
    top = features["predictions"][9][0]["str"]
    chip = row(page, 9).locator('.chip[data-layer="0"]').first
    assert f"logit({json.dumps(top, ensure_ascii=False)})" in chip.get_attribute("title")
    chip.click()
    page.wait_for_selector("#feature-head .feature-stats")
    stats = page.text_content("#feature-head .feature-stats")
    assert re.search(r"act \S+ · DFA \S+ · logit\(.+\) [+−]?\S+", stats), stats
    assert page.get_attribute("#feature-head .stat-logit .tk", "title").startswith(json.dumps(top, ensure_ascii=False))
    # the prediction list names its columns; the DFA bars say what they sum
    page.wait_for_selector("#effect-predictions .preds-head")
    assert page.locator("#effect-predictions .preds-head span").all_text_contents() == ["next token", "prob", "logit"]
    assert "summed over heads" in page.text_content("#dfa-card .two-col")
    assert "logit per unit" in page.text_content("#effect-top h4")
    page.wait_for_selector("#rdfa-tree .rdfa-cols")
    assert "% of node" in page.text_content("#rdfa-tree .rdfa-cols")
    page.select_option("#order", "logit")
    page.wait_for_function("() => document.getElementById('features-head').textContent.includes('logit')")
    assert_clean(page, base)


def test_the_dfa_heatmap_has_a_colour_bar_axis_titles_and_position_numbers(browser, servers):
    base = servers["labelled"]
    page = open_wide(browser, base)
    row(page, 30).locator(".chip").first.click()
    page.wait_for_selector("#dfa-heatmap[data-ticks]")
    assert page.text_content("#dfa-axis-y") == "head" and "source" in page.text_content("#dfa-axis-x")
    assert page.is_visible("#dfa-colorbar .cb-ramp")
    sel = page.locator('#tokens .chip[aria-pressed="true"]')
    d = post(base, "/api/dfa", {"prompt": PROMPT, "layer": int(sel.get_attribute("data-layer")),
                                "feature": int(sel.get_attribute("data-feature")), "position": 30})
    biggest = max(abs(v) for row in d["terms"][:31] for v in row)  # every source is a column on a short prompt
    lo, hi = number(page.text_content("#dfa-cb-min")), number(page.text_content("#dfa-cb-max"))
    assert lo == -hi and hi == pytest.approx(biggest, rel=5e-3)
    ticks = [int(t) for t in page.get_attribute("#dfa-heatmap", "data-ticks").split(",")]
    step = ticks[1] - ticks[0]
    assert ticks[-1] == 30 and all(t % step == 0 for t in ticks[:-1]) and len(ticks) >= 4, ticks

    # a long prompt: the map shows a window of the top sources, each numbered column a true position
    page.fill("#prompt", LONG)
    page.press("#prompt", "Control+Enter")
    page.wait_for_function("() => document.getElementById('token-count').textContent.startsWith('221')")
    row(page, 220).locator(".chip").first.click()
    page.wait_for_function("() => (document.getElementById('dfa-heatmap')?.dataset.ticks || '').endsWith('220')")
    ticks = [int(t) for t in page.get_attribute("#dfa-heatmap", "data-ticks").split(",")]
    assert len(ticks) >= 8 and ticks == sorted(set(ticks)) and ticks[-1] == 220, ticks
    assert "of 221 sources" in page.text_content("#dfa-note")
    assert_clean(page, base)


def test_attention_shading_is_one_hue_that_no_sign_uses(browser, servers):
    page = open_wide(browser, servers["labelled"])
    assert page.is_hidden("#attn-key")
    page.select_option("#attn-layer", "1")
    page.select_option("#attn-head", "2")
    row(page, 12).locator(".tok").hover()
    page.wait_for_selector('#tokens .row.attn-dest[data-position="12"]')
    shades = page.locator("#tokens .tok.attn .tk").evaluate_all(
        "els => els.map(e => getComputedStyle(e).backgroundColor)")
    signs = page.evaluate(
        "['--pos', '--neg'].map(v => getComputedStyle(document.documentElement).getPropertyValue(v).trim())")
    assert len(shades) > 5 and len({round(hue(s)) for s in shades}) == 1, shades
    for sign in signs:
        assert hue_gap(hue(shades[0]), hue(sign)) > 60, (shades[0], sign)
    key = page.text_content("#attn-key")
    assert page.is_visible("#attn-key .attn-ramp") and "L1H2 attention from 12" in key
    assert hue(page.locator("#attn-key .attn-ramp").evaluate("e => getComputedStyle(e).backgroundImage")
               .split("rgba(")[1]) == pytest.approx(hue(shades[0]), abs=1)
    assert_clean(page, servers["labelled"])


def test_rdfa_children_come_largest_first_and_the_unexpandable_terms_apart(browser, servers):
    base = servers["labelled"]
    root = {"kind": "feature", "layer": 1, "position": 9, "feature": 0, "coef": 1}
    features = post(base, "/api/features", {"prompt": PROMPT, "k": 8, "layers": [1]})
    root["feature"] = features["rows"][9][0]["feature"]
    top = post(base, "/api/rdfa", {"prompt": PROMPT, "node": root, "top_k": 5})
    head = post(base, "/api/rdfa", {"prompt": PROMPT, "node": top["children"][0]["ref"], "top_k": 5})
    for answer in (top, head):  # the server: children and remainders, each largest |value| first
        sizes = [abs(c["value"]) for c in answer["children"]]
        assert sizes == sorted(sizes, reverse=True)
        rests = [abs(v) for v in answer["remainders"].values()]
        assert rests == sorted(rests, reverse=True)
    assert {c["kind"] for c in head["children"]} == {"component", "feature"}

    page = open_wide(browser, base)
    row(page, 9).locator(f'.chip[data-layer="1"][data-feature="{root["feature"]}"]').click()
    page.wait_for_selector("#rdfa-tree .rdfa-node.root .rdfa-closure")
    first = page.locator('#rdfa-tree .rdfa-node.root > .rdfa-children > .rdfa-node[data-kind="head_source"]').first
    first.locator(".expand").click()
    group = first.locator(":scope > .rdfa-children")
    group.locator(".rdfa-rest").wait_for()
    value = "e => +e.title.replace('value ', '')"
    parent = first.locator(":scope > .rdfa-line .rdfa-value").evaluate(value)
    opened = group.locator(":scope > .rdfa-node .rdfa-value").evaluate_all(f"els => els.map({value})")
    rest = group.locator(".rdfa-rest > .rdfa-node")
    rest_values = rest.locator(".rdfa-value").evaluate_all(f"els => els.map({value})")
    assert opened and [abs(v) for v in opened] == sorted((abs(v) for v in opened), reverse=True)
    assert group.locator(":scope > .rdfa-node .expand").count() == len(opened)  # every one listed first expands
    assert [abs(v) for v in rest_values] == sorted((abs(v) for v in rest_values), reverse=True)
    assert len(rest_values) == sum(c["kind"] == "component" for c in head["children"]) + len(head["remainders"])
    assert rest.locator(".expand").count() == 0
    for i in range(rest.count()):  # each term apart: what it is, its share of the node, why it stops there
        term = rest.nth(i)
        assert term.locator(".why").text_content().startswith("not expandable: ")
        assert number(term.locator(".rdfa-share").text_content()) == pytest.approx(100 * rest_values[i] / parent,
                                                                                  rel=0.06, abs=0.01)
    mlp = rest.filter(has_text="MLP output of layer 0")
    assert mlp.count() == 1 and "nonlinear" in mlp.locator(".why").text_content()
    assert set(rest.evaluate_all("els => els.map(e => e.dataset.kind)")) == {"component", "remainder"}
    share = 100 * sum(rest_values) / parent
    head_text = group.locator(".rdfa-rest-head").text_content()
    assert f"{len(rest_values)} terms" in head_text and "of the node" in head_text
    assert number(re.search(r"together (\S+)%", head_text).group(1)) == pytest.approx(share, rel=0.06, abs=0.01)
    assert_clean(page, base)
