"""The dashboards website and the head report, written from synthetic data and opened in headless Chromium.

`make_bundle` builds a schema-valid bundle with random numbers, dead features, examples of one and two segments,
and a vocabulary full of strings that would break a careless page (`</script>`, quotes, `<img onerror>`, newlines,
U+2028, emoji). The browser tests open the pages from file:// and check what a reader would see.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from browser import Browser, Page

from attnsae.views.dashboards import CHUNK_SIZE, display_example, display_feature, write_dashboards
from attnsae.views.heads_report import write_head_report

pytestmark = pytest.mark.integration

FAMILIES = ["induction", "short-range", "long-range", "unclear"]
# Strings a page must show as text, never run: each would execute or break markup if inserted unescaped.
NASTY = ["</script><script>window.__pwned = 1</script>", '<img src=x onerror="window.__pwned = 2">', '"', "'",
         "\n", "\n\n", "\t", "  ", " ", "", "&amp;", "\u2028", "\u2029", " é", "漢字", "🙂", "\\", "`${1}`",
         "<!--", "]]>", "\r"]
FEATURE = 123   # a live feature of every SAE whose first example has two segments and every NASTY token
DEAD = 7        # a dead feature of every SAE
SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # an XML namespace name (identifier), never fetched


def _round(x: float) -> float:
    return float(f"{x:.4g}")


WINDOWS = {"before": len(NASTY) + 1, "after": 3, "peak_context": 3}


def _example(rng: random.Random, act: float, vocab_size: int, two_segments: bool, nasty: bool) -> dict:
    """One raw example: the window around the destination (every NASTY token at its start when ``nasty``) and, for
    ``two_segments``, the stretch back to a DFA peak far before it. DFA is zero after the destination, as in the
    real data."""
    dest = rng.randint(40, 120)
    lo = dest - WINDOWS["before"]
    peak = rng.randint(3, 10) if two_segments else None
    start = peak - WINDOWS["peak_context"] if two_segments else lo
    positions = range(start, dest + WINDOWS["after"] + 1)
    tokens = [rng.randrange(len(NASTY), vocab_size) for _ in positions]
    if nasty:
        tokens[lo - start:lo - start + len(NASTY)] = range(len(NASTY))
    acts = [act if p == dest else _round(max(0.0, rng.gauss(0, act / 4))) for p in positions]
    dfa = [(3.0 if p == peak else _round(rng.gauss(0.1, 0.5))) if p <= dest else 0.0 for p in positions]
    if not two_segments:  # the peak lies in the window
        peak = max((p for p in positions if p <= dest), key=lambda p: dfa[p - start])
    total = _round(sum(dfa))
    return {"act": act, "ctx": rng.randrange(5000), "dest": dest, "dfa_total": total, "bias": _round(act - total),
            "peak": peak, "start": start, "tokens": tokens, "acts": acts, "dfa": dfa}


def _feature(rng: random.Random, i: int, n_heads: int, vocab_size: int, n_tokens: int, dead: bool) -> dict:
    raw = [rng.random() ** 3 for _ in range(n_heads)]
    shares = [_round(w / sum(raw)) for w in raw]
    pos = sorted(((rng.randrange(vocab_size), _round(rng.uniform(0.2, 2))) for _ in range(10)), key=lambda p: -p[1])
    neg = sorted(((rng.randrange(vocab_size), _round(-rng.uniform(0.2, 2))) for _ in range(10)), key=lambda p: p[1])
    common = {"i": i, "head_shares": shares, "logits": {"pos": [list(p) for p in pos], "neg": [list(p) for p in neg]},
              "logit_hist": {"start": -2.0, "width": 0.1,
                             "counts": [int(3000 * 2.718 ** (-((k - 20) / 5) ** 2)) for k in range(40)]}}
    if dead:
        return {**common, "n_fired": 0, "density": 0.0, "max_act": 0.0, "mean_act": 0.0, "family": "dead",
                "family_stats": {}, "head_dfa": [0.0] * n_heads,
                "hist": {"start": 0.0, "width": 0.1, "counts": [0] * 30}, "top_tokens": [], "groups": []}
    n_fired = rng.randint(1, 20000)
    max_act = _round(rng.uniform(0.5, 8))
    two = i == FEATURE or rng.random() < 0.5
    top = [_example(rng, _round(max_act * (1 - 0.1 * k)), vocab_size, two and k == 0, i == FEATURE and k == 0)
           for k in range(3)]
    quantile = [_example(rng, _round(max_act * rng.uniform(0.3, 0.6)), vocab_size, rng.random() < 0.3, False)
                for _ in range(2)]
    return {**common, "n_fired": n_fired, "density": _round(n_fired / n_tokens), "max_act": max_act,
            "mean_act": _round(max_act * rng.uniform(0.1, 0.4)), "family": rng.choice(FAMILIES),
            "family_stats": {"induction": _round(rng.random()), "local": _round(rng.random()),
                             "far": _round(rng.random()), "self": _round(rng.random() / 5),
                             "bos": _round(rng.random() / 5), "mean_distance": _round(rng.uniform(1, 60)),
                             "n_examples": 5},
            "head_dfa": [_round(rng.gauss(0.2, 0.4)) for _ in range(n_heads)],
            "hist": {"start": 0.0, "width": _round(max_act / 30),
                     "counts": [int(n_fired * 0.8 ** k * rng.uniform(0.2, 0.3)) for k in range(30)]},
            "top_tokens": [[rng.randrange(vocab_size), 10 - k] for k in range(6)],
            "groups": [{"title": "Top activations", "examples": top},
                       {"title": f"Quantile 30–60% (act {_round(0.3 * max_act)}–{_round(0.6 * max_act)})",
                        "examples": quantile}]}


def make_bundle(n_saes: int = 2, d_sae: int = 2048, n_heads: int = 8, vocab_size: int = 3000,
                dead_fraction: float = 0.1, seed: int = 0) -> dict:
    """A schema-valid dashboards bundle with random data; feature DEAD is dead and FEATURE is alive in every SAE."""
    rng = random.Random(seed)
    n_tokens = 1_000_000
    vocab = NASTY + [(" " if k % 2 else "") + f"w{k}" for k in range(len(NASTY), vocab_size)]
    saes = []
    for layer in range(n_saes):
        features = [_feature(rng, i, n_heads, vocab_size, n_tokens,
                             dead=i == DEAD or (i != FEATURE and rng.random() < dead_fraction)) for i in range(d_sae)]
        saes.append({"name": f"L{layer}", "layer": layer, "hook_name": f"blocks.{layer}.attn.hook_z",
                     "path": f"runs/x/L{layer}", "d_sae": d_sae, "n_heads": n_heads, "d_head": 32,
                     "features": features})
    return {"title": "attnsae dashboards — </script><b>test</b>", "model": 'tiny "model"',
            "corpus": {"source": "synthetic", "split": "test", "n_tokens": n_tokens, "context_size": 128},
            "vocab": vocab,
            "families": {"labels": FAMILIES, "criterion": "largest share of DFA by source distance <5 & >20",
                         "thresholds": {"induction": 0.4, "short-range": 0.5, "long-range": 0.5}},
            "heads_href": "heads.html", "windows": WINDOWS, "saes": saes}


def make_report(bundle: dict) -> dict:
    """A head report over the bundle: each head lists features with most of their weight on it; head 0 of each SAE
    starts with FEATURE, whose destination tokens are NASTY strings."""
    vocab, heads = bundle["vocab"], []
    for sae in bundle["saes"]:
        for h in range(sae["n_heads"]):
            mine = [f for f in sae["features"] if f["family"] != "dead" and f["head_shares"][h] > 0.5][:6]
            rows = [{"i": f["i"], "share": f["head_shares"][h], "family": f["family"], "density": f["density"],
                     "top_tokens": [vocab[t] for t, _ in f["top_tokens"][:3]],
                     "logits_pos": [vocab[t] for t, _ in f["logits"]["pos"][:3]],
                     "logits_neg": [vocab[t] for t, _ in f["logits"]["neg"][:3]]} for f in mine]
            if h == 0:
                feature = sae["features"][FEATURE]
                rows.insert(0, {"i": FEATURE, "share": feature["head_shares"][0], "family": feature["family"],
                                "density": feature["density"], "top_tokens": NASTY[:4], "logits_pos": NASTY[4:8],
                                "logits_neg": NASTY[8:12]})
            heads.append({"layer": sae["layer"], "head": h, "sae": sae["name"],
                          "verdict": "monosemantic" if h % 3 == 0 else "polysemantic", "score": 0.5 + h / 20,
                          "dominant_family": "induction", "dominant_share": 0.61, "features": rows})
    n_poly = sum(h["verdict"] == "polysemantic" for h in heads)
    return {"title": "attnsae head report </script><script>window.__pwned = 3</script>", "model": "tiny",
            "criterion": "monosemantic if one family holds ≥ 60% of the head's feature share",
            "summary": f"{n_poly} of {len(heads)} heads polysemantic", "heads": heads}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("dashboards")
    bundle = make_bundle()
    assert write_dashboards(bundle, out) == out / "index.html"
    assert write_head_report(make_report(bundle), out / "heads.html") == out / "heads.html"
    return out, bundle


def _open(browser: Browser, path: Path, hash_: str = "") -> Page:
    page = browser.open(path.as_uri() + hash_)
    page.wait_for("document.querySelector('#list .row') || document.querySelector('#heads .head')")
    return page


def _assert_clean(page: Page) -> None:
    """No console error or exception, no request off the disk, no injected script ran."""
    assert page.errors() == [], page.errors()
    assert page.requests and all(u.startswith("file://") for u in page.requests), page.requests
    assert page.evaluate("window.__pwned === undefined && document.querySelectorAll('img').length === 0")


def _show(page: Page, hash_: str) -> None:
    sae, i = hash_.lstrip("#").split("/")
    page.evaluate(f"location.hash = {json.dumps(hash_)}")
    page.wait_for(f"document.querySelector('article.feature[data-sae=\"{sae}\"][data-index=\"{i}\"]')")


# ------------------------------------------------------------------------------------------------ files on disk

def test_site_has_no_remote_urls_and_feature_data_in_chunks(site):
    out, bundle = site
    files = [p for p in out.rglob("*") if p.is_file()]
    for p in files:
        text = p.read_text(encoding="utf-8").replace(SVG_NAMESPACE, "")
        assert not re.search(r"https?://", text), f"{p} names a remote URL"
        for s in NASTY[:2]:
            assert s not in text, f"{p} holds the raw string {s!r}"
    for sae in bundle["saes"]:
        chunks = sorted((out / "data" / sae["name"]).glob("*.js"), key=lambda p: int(p.stem))
        assert len(chunks) == -(-sae["d_sae"] // CHUNK_SIZE)
        for n, chunk in enumerate(chunks):
            text = chunk.read_text(encoding="utf-8")
            assert "</" not in text and "\u2028" not in text and "\u2029" not in text
            prefix, suffix = "window.ATTNSAE_REGISTER(", ");\n"
            assert text.startswith(prefix) and text.endswith(suffix)
            payload = json.loads(text[len(prefix):-len(suffix)])
            shown = [display_feature(f, WINDOWS) for f in sae["features"][n * CHUNK_SIZE:(n + 1) * CHUNK_SIZE]]
            assert payload == {"sae": sae["name"], "chunk": n, "features": shown}
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "Top activations" not in index  # examples live in the chunks, not in the page
    vocab = (out / "vocab.js").read_text(encoding="utf-8")
    assert json.loads(vocab.removeprefix("window.ATTNSAE_VOCAB = ").removesuffix(";\n")) == bundle["vocab"]


# ------------------------------------------------------------------------------------------------ in the browser

def test_index_lists_features_offline_without_errors(site, browser, tmp_path):
    out, bundle = site
    page = _open(browser, out / "index.html")
    n_rows = page.evaluate("document.querySelectorAll('#list .row').length")
    assert 10 < n_rows < 120  # virtualised: only the rows in view exist
    assert page.evaluate("document.querySelector('#list .row .idx').textContent") == "0"
    assert "2,048 of 2,048 features" in page.evaluate("document.getElementById('list-count').textContent")
    assert page.evaluate("document.querySelector('#topbar h1').textContent") == bundle["title"]
    assert page.evaluate("document.querySelector('#topbar a').getAttribute('href')") == "heads.html"
    page.evaluate("document.getElementById('list').scrollTop = 1000 * 26")
    page.wait_for("[...document.querySelectorAll('#list .row .idx')].some(e => e.textContent === '1000')")
    assert page.evaluate("document.querySelectorAll('#list .row').length") < 120
    page.screenshot(path=tmp_path / "overview.png")
    _assert_clean(page)


def test_search_box_opens_the_feature_panel(site, browser, tmp_path):
    out, bundle = site
    feature = bundle["saes"][1]["features"][FEATURE]
    page = _open(browser, out / "index.html")
    page.fill("#search", f"L1/{FEATURE}")
    page.press("#search", "Enter")
    page.wait_for(f"document.querySelector('article.feature[data-sae=\"L1\"][data-index=\"{FEATURE}\"]')")
    assert page.evaluate("location.hash") == f"#L1/{FEATURE}"
    count = lambda selector: page.evaluate(f"document.querySelectorAll({json.dumps(selector)}).length")
    assert count(".ex") == sum(len(g["examples"]) for g in feature["groups"])
    assert count(".group h4") == len(feature["groups"])
    assert count("svg.chart rect.bar.weight") == 8 and count("svg.chart rect.bar.pos, svg.chart rect.bar.neg") == 8
    assert count("svg.chart rect.bar.act") == sum(c > 0 for c in feature["hist"]["counts"])
    assert count("table.logits.pos tbody tr") == 10 and count("table.logits.neg tbody tr") == 10
    assert count(".ex .t.dest") == count(".ex") and count(".ex .dest-act") == count(".ex")
    assert page.evaluate("document.querySelector('.title-row .badge').textContent") == feature["family"]
    assert "criterion" in page.evaluate("document.querySelector('.title-row .badge').title")
    assert page.evaluate("document.querySelector('#list .row.selected .idx').textContent") == str(FEATURE)
    page.screenshot(path=tmp_path / "feature.png")
    assert (tmp_path / "feature.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _assert_clean(page)


def test_bad_search_says_what_to_type(site, browser):
    out, _ = site
    page = _open(browser, out / "index.html")
    for text, needle in [("L9/3", "no SAE named"), ("99999", "has features 0–2047"), ("cat", "not a feature")]:
        page.fill("#search", text)
        page.press("#search", "Enter")
        assert needle in page.wait_for("document.getElementById('search-message').textContent")
    _assert_clean(page)


def test_hash_addresses_a_feature_and_history_moves_between_them(site, browser):
    out, _ = site
    page = _open(browser, out / "index.html", "#L0/5")
    page.wait_for("document.querySelector('article.feature[data-sae=\"L0\"][data-index=\"5\"]')")
    _show(page, "#L0/6")
    _show(page, "#L1/700")
    assert page.evaluate("document.getElementById('sae-select').value") == "1"
    page.evaluate("history.back()")
    page.wait_for("document.querySelector('article.feature[data-sae=\"L0\"][data-index=\"6\"]')")
    page.evaluate("history.back()")
    page.wait_for("document.querySelector('article.feature[data-sae=\"L0\"][data-index=\"5\"]')")
    page.evaluate("history.forward()")
    page.wait_for("document.querySelector('article.feature[data-sae=\"L0\"][data-index=\"6\"]')")
    _assert_clean(page)


def test_dead_feature_renders_gracefully(site, browser):
    out, _ = site
    page = _open(browser, out / "index.html", f"#L0/{DEAD}")
    page.wait_for(f"document.querySelector('article.feature[data-index=\"{DEAD}\"]')")
    assert page.evaluate("document.querySelector('.title-row .badge').textContent") == "dead"
    assert "never fired" in page.evaluate("document.querySelector('.examples').textContent")
    assert page.evaluate("document.querySelectorAll('.ex').length") == 0
    assert page.evaluate("document.querySelectorAll('svg.chart rect.bar.weight').length") == 8
    _assert_clean(page)


def test_tokens_are_shown_as_text_with_visible_whitespace(site, browser):
    out, bundle = site
    example = bundle["saes"][0]["features"][FEATURE]["groups"][0]["examples"][0]
    page = _open(browser, out / "index.html", f"#L0/{FEATURE}")
    page.wait_for("document.querySelector('.ex')")
    shown = page.evaluate("[...document.querySelector('.ex .toks').querySelectorAll('.t')].map(e => e.textContent)")
    tokens = [t for seg in display_example(example, WINDOWS)["segments"] for t in seg["tokens"]]
    assert len(shown) == len(tokens)
    assert "</script><script>window.__pwned·=·1</script>" in shown
    assert {"↵", "↵↵", "→", "··", "·", "∅", "\\u2028", "·é", "🙂", "␍"} <= set(shown)
    titles = page.evaluate("[...document.querySelectorAll('.ex')[0].querySelectorAll('.t')].map(e => e.title)")
    assert all(t.startswith("pos ") and "act " in t and "DFA" in t for t in titles)
    assert any('"</script><script>window.__pwned = 1</script>"' in t for t in titles)
    # two segments: one "…" between them; the first example of FEATURE has two
    assert page.evaluate("document.querySelectorAll('.ex')[0].querySelectorAll('.gap').length") == 1
    n_two = sum(len(display_example(ex, WINDOWS)["segments"]) == 2
                for g in bundle["saes"][0]["features"][FEATURE]["groups"] for ex in g["examples"])
    assert page.evaluate("document.querySelectorAll('.ex .gap').length") == n_two
    assert page.evaluate("document.querySelectorAll('.ex .t.peak').length") == page.evaluate(
        "document.querySelectorAll('.ex').length")
    _assert_clean(page)


def test_colour_toggle_switches_between_dfa_and_activation(site, browser):
    out, _ = site
    page = _open(browser, out / "index.html", f"#L0/{FEATURE}")
    page.wait_for("document.querySelector('.ex')")
    dest_colour = "getComputedStyle(document.querySelector('.ex .t.dest')).backgroundColor"
    assert page.evaluate("document.querySelector('.examples').classList.contains('by-dfa')")
    by_dfa = page.evaluate(dest_colour)
    page.evaluate("document.querySelector('.modes button[data-mode=act]').click()")
    assert page.evaluate("document.querySelector('.examples').classList.contains('by-act')")
    by_act = page.evaluate(dest_colour)
    assert by_act != by_dfa and by_act != "rgba(0, 0, 0, 0)"  # the destination has the feature's activation
    _assert_clean(page)


def test_list_filters_by_family_and_sorts_by_density(site, browser):
    out, bundle = site
    page = _open(browser, out / "index.html")

    def choose(select: str, value: str) -> None:
        page.evaluate(f"(() => {{ const s = document.getElementById('{select}'); s.value = '{value}'; "
                      f"s.dispatchEvent(new Event('change')); }})()")

    dead_code = page.evaluate("ATTNSAE_INDEX.families.names.indexOf('dead')")
    choose("family-select", str(dead_code))
    rows = page.evaluate("[...document.querySelectorAll('#list .row')].map(r => r.className)")
    assert rows and all("dead" in r for r in rows)
    n_dead = sum(f["family"] == "dead" for f in bundle["saes"][0]["features"])
    assert page.evaluate("document.getElementById('list-count').textContent").startswith(f"{n_dead:,} of")
    choose("family-select", "all")
    choose("sort-select", "density-desc")
    shown = page.evaluate("[...document.querySelectorAll('#list .row .idx')].map(e => Number(e.textContent))")
    density = [bundle["saes"][0]["features"][i]["density"] for i in shown]
    assert density == sorted(density, reverse=True) and density[0] == max(
        f["density"] for f in bundle["saes"][0]["features"])
    _assert_clean(page)


def test_head_report_links_into_the_dashboards(site, browser, tmp_path):
    out, bundle = site
    report = make_report(bundle)
    page = _open(browser, out / "heads.html")
    assert page.evaluate("document.querySelectorAll('#heads .head').length") == len(report["heads"])
    assert page.evaluate("document.querySelector('#summary h2').textContent") == report["summary"]
    verdicts = page.evaluate("[...document.querySelectorAll('#heads .head .verdict')].map(e => e.textContent)")
    assert verdicts == [h["verdict"] for h in report["heads"]]
    chips = page.evaluate("[...document.querySelectorAll('#heads .head')[0].querySelectorAll('.tk')]"
                          ".map(e => e.textContent)")
    assert chips[:4] == ["</script><script>window.__pwned·=·1</script>", '<img·src=x·onerror="window.__pwned·=·2">',
                         '"', "'"]
    assert page.evaluate("document.querySelector('#topbar h1').textContent") == report["title"]
    hrefs = page.evaluate("[...document.querySelectorAll('#heads table a')].map(a => a.getAttribute('href'))")
    assert hrefs == [f"index.html#{h['sae']}/{f['i']}" for h in report["heads"] for f in h["features"]]
    page.screenshot(path=tmp_path / "heads.png")
    _assert_clean(page)
    page.evaluate(f"document.querySelector('#heads table a[href=\"index.html#L1/{FEATURE}\"]').click()")
    page.wait_for(f"document.querySelector('article.feature[data-sae=\"L1\"][data-index=\"{FEATURE}\"]')")
    _assert_clean(page)
