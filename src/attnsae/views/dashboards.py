"""Feature dashboards as a self-contained offline website: one page, the vocabulary, and per-feature data in chunks.

The input is a *bundle*, the raw data that the dashboards computation builds (floats unrounded, arrays numpy; this
module cuts each example's display windows and rounds, :mod:`attnsae.views.numbers`)::

    bundle = {
      "title": str, "model": str,
      "corpus": {"source": str, "split": str, "n_tokens": int, "context_size": int},
      "vocab": [str] * d_vocab,                     # decoded string of each token id
      "families": {"labels": [str, ...], "criterion": str, "thresholds": {name: float}},
      "heads_href": str | None,                     # relative link to the head report, shown in the header
      "windows": {"before": int, "after": int, "peak_context": int},  # what an example shows (display_example)
      "saes": [{"name": "L1", "layer": int, "hook_name": "blocks.1.attn.hook_z", "path": str,
                "fingerprint": str,                 # of the SAE's weights (attnsae.sae.checks.fingerprint)
                "d_sae": int, "n_heads": int, "d_head": int,
                "features": [FEATURE] * d_sae}],    # feature i at position i
    }
    FEATURE = {
      "i": int, "n_fired": int, "density": float, "max_act": float, "mean_act": float,
      "family": one of labels | "dead",
      "family_stats": {"induction", "local", "far", "self", "bos", "mean_distance": float, "n_examples": int},
      "head_shares": [float] * n_heads,             # weight-based attribution, sums to 1
      "head_dfa": [float] * n_heads,                # mean DFA by head over the top examples
      "hist": {"start": float, "width": float, "counts": [int] * n_bins},        # positive activations
      "logits": {"pos": [[token_id, value]] * k, "neg": [[token_id, value]] * k},
      "logit_hist": {"start": float, "width": float, "counts": [int] * n_bins},  # logit effect over the vocab
      "top_tokens": [[token_id, count]] * k,        # commonest destination tokens of the top examples
      "groups": [{"title": str, "examples": [RAW_EXAMPLE]}],  # [] for a dead feature
    }
    RAW_EXAMPLE = {
      "act": float, "ctx": int, "dest": int, "dfa_total": float, "bias": float, "peak": int,
      "start": int, "tokens": [int] * n, "acts": [float] * n, "dfa": [float] * n,   # positions start .. start + n
    }

What the page reads (:func:`display_feature`, :func:`read_feature`) is FEATURE rounded, each example an EXAMPLE::

    EXAMPLE = {
      "act": float, "ctx": int, "dest": int, "dfa_total": float, "bias": float, "peak": int,
      "segments": [{"start": int, "tokens": [int] * n, "acts": [float] * n, "dfa": [float] * n}],  # 1 or 2
    }

The website written into ``out_dir`` (all relative links; it works from file:// with no network)::

    index.html            page + styles + app, with a per-SAE summary (density, max act, family, top tokens)
    vocab.js              window.ATTNSAE_VOCAB = [str] * d_vocab
    data/<sae>/<n>.js     window.ATTNSAE_REGISTER({"sae": name, "chunk": n, "features": features[64n:64n+64]})

The page loads a chunk on demand by adding a <script src> tag (fetch/XHR are blocked under file://), and a feature
has a stable address ``index.html#<sae>/<i>``, e.g. ``index.html#L1/123``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from attnsae.views.numbers import compact, relative, sig
from attnsae.views.webpage import asset, js_literal, page

CHUNK_SIZE = 64  # features per data file

BODY = """\
<header class="topbar" id="topbar"></header>
<div class="app">
  <aside class="side">
    <div class="controls">
      <label>SAE <select id="sae-select"></select></label>
      <label>family <select id="family-select"></select></label>
      <label>sort <select id="sort-select">
        <option value="index">index</option>
        <option value="density-desc">density ↓</option>
        <option value="density-asc">density ↑</option>
        <option value="max-desc">max act ↓</option>
      </select></label>
    </div>
    <form id="search-form" class="search" autocomplete="off">
      <input id="search" type="search" placeholder="feature: 123 or L1/123 — Enter" spellcheck="false">
      <div id="search-message" class="search-message" role="status"></div>
    </form>
    <div id="list-count" class="list-count"></div>
    <div class="list-head"><span>#</span><span>family</span><span>density</span><span>max</span>
      <span>top → logit</span></div>
    <div id="list" class="list"><div id="list-spacer" class="list-spacer"></div></div>
  </aside>
  <main id="main" class="main"></main>
</div>"""


def display_example(ex: dict, windows: dict) -> dict:
    """The EXAMPLE a page shows of RAW_EXAMPLE ``ex``: the window of ``windows["before"]`` / ``["after"]`` tokens
    around the destination, plus ``["peak_context"]`` tokens either side of the DFA peak when the peak lies before
    the window (one segment when the two touch); activations and DFA to 3 digits of each segment's largest."""
    start, dest, peak, pc = ex["start"], ex["dest"], ex["peak"], windows["peak_context"]
    tokens, acts, dfa = (np.asarray(ex[k]) for k in ("tokens", "acts", "dfa"))
    lo, hi = max(start, dest - windows["before"]), min(start + len(tokens), dest + windows["after"] + 1)
    spans = [(lo, hi)]
    if peak < lo:
        p_lo, p_hi = max(start, peak - pc), peak + pc + 1
        spans = [(p_lo, hi)] if p_hi >= lo - 1 else [(p_lo, p_hi), (lo, hi)]
    return {"act": sig(ex["act"]), "ctx": int(ex["ctx"]), "dest": int(dest), "dfa_total": sig(ex["dfa_total"]),
            "bias": sig(ex["bias"]), "peak": int(peak),
            "segments": [{"start": int(s0), "tokens": tokens[s0 - start:s1 - start].tolist(),
                          "acts": relative(acts[s0 - start:s1 - start]), "dfa": relative(dfa[s0 - start:s1 - start])}
                         for s0, s1 in spans]}


def display_feature(feature: dict, windows: dict) -> dict:
    """The FEATURE a page shows of a bundle's feature: numbers rounded, examples cut (:func:`display_example`)."""
    groups = [{"title": g["title"], "examples": [display_example(e, windows) for e in g["examples"]]}
              for g in feature["groups"]]
    return compact({k: v for k, v in feature.items() if k != "groups"}) | {"groups": groups}


def write_dashboards(bundle: dict, out_dir: Path) -> Path:
    """Write the dashboards website for ``bundle`` into the existing folder ``out_dir``; return its index.html."""
    out_dir = Path(out_dir)
    names = list(bundle["families"]["labels"]) + ["dead"]
    saes, folders = [], set()
    for sae in bundle["saes"]:
        folder = _folder_name(sae["name"], folders)
        shown = {**sae, "features": [display_feature(f, bundle["windows"]) for f in sae["features"]]}
        _write_chunks(shown, out_dir / "data" / folder)
        saes.append(_summary(shown, f"data/{folder}", names))
    index = compact({
        "title": bundle["title"], "model": bundle["model"], "corpus": bundle["corpus"],
        "families": {**bundle["families"], "names": names}, "heads_href": bundle.get("heads_href"),
        "chunk_size": CHUNK_SIZE, "saes": saes,
    })
    (out_dir / "vocab.js").write_text(f"window.ATTNSAE_VOCAB = {js_literal(list(bundle['vocab']))};\n",
                                      encoding="utf-8")
    html = page(bundle["title"], ["common.css", "dashboards.css"], BODY,
                [f"window.ATTNSAE_INDEX = {js_literal(index)};", asset("common.js"), asset("charts.js"),
                 asset("dashboards.js")],
                script_srcs=("vocab.js",))
    index_path = out_dir / "index.html"
    index_path.write_text(html, encoding="utf-8")
    return index_path


def _read_index(site: Path) -> dict:
    """The ``window.ATTNSAE_INDEX`` literal of a written site's index.html."""
    html = (site / "index.html").read_text(encoding="utf-8")
    start = html.index("window.ATTNSAE_INDEX = ") + len("window.ATTNSAE_INDEX = ")
    return json.loads(html[start:html.index("</script>", start)].strip().rstrip(";"))


def read_feature(site: str | Path, sae: str, i: int) -> dict:
    """Feature ``i`` of the SAE named ``sae`` (e.g. "L17") read back from a written site: the FEATURE dict above."""
    entry = _sae_entry(Path(site), sae)
    if not 0 <= i < entry["d_sae"]:
        raise KeyError(f"SAE {sae} has features 0..{entry['d_sae'] - 1}, not {i}")
    return _read_chunk(Path(site) / entry["dir"], i // CHUNK_SIZE)[i % CHUNK_SIZE]


def _sae_entry(site: Path, sae: str) -> dict:
    """The index's entry of the SAE named ``sae``."""
    saes = {s["name"]: s for s in _read_index(site)["saes"]}
    if sae not in saes:
        raise KeyError(f"no SAE named {sae!r} in {site}: it has {', '.join(saes)}")
    return saes[sae]


def _read_chunk(folder: Path, n: int) -> list[dict]:
    """The features of data file ``n`` of one SAE's folder."""
    text = (folder / f"{n}.js").read_text(encoding="utf-8")
    return json.loads(text[text.index("(") + 1:text.rindex(")")])["features"]


def read_families(site: str | Path) -> list[dict]:
    """The site's SAEs: ``[{"name": "L17", "layer": 17, "fingerprint": str | None, "families": [str] * d_sae}]``
    (``fingerprint``: :func:`attnsae.sae.checks.fingerprint` of the SAE, None in sites written before it was kept)."""
    index = _read_index(Path(site))
    names = index["families"]["names"]
    return [{"name": s["name"], "layer": s["layer"], "fingerprint": s.get("fingerprint"),
             "families": [names[c] for c in s["family"]]} for s in index["saes"]]


def read_vocab(site: str | Path) -> list[str]:
    """The site's vocabulary (``vocab.js``): token id -> text."""
    text = (Path(site) / "vocab.js").read_text(encoding="utf-8")
    return json.loads(text[text.index("=") + 1:].strip().rstrip(";"))


def _folder_name(name: str, taken: set[str]) -> str:
    """A file-system- and URL-safe folder name for an SAE, unique among ``taken`` (which it joins)."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".") or "sae"
    folder, n = base, 1
    while folder.lower() in taken:
        n += 1
        folder = f"{base}_{n}"
    taken.add(folder.lower())
    return folder


def _write_chunks(sae: dict, folder: Path) -> None:
    """data/<sae>/<n>.js for n = 0, 1, ...: features [64n, 64n + 64) of one SAE, in index order."""
    features = sae["features"]
    for position, feature in enumerate(features):
        if feature["i"] != position:
            raise ValueError(f"SAE {sae['name']}: feature at position {position} has index {feature['i']}; "
                             f"features must be listed by index 0..d_sae-1")
    folder.mkdir(parents=True, exist_ok=True)
    for n, start in enumerate(range(0, len(features), CHUNK_SIZE)):
        payload = {"sae": sae["name"], "chunk": n, "features": features[start:start + CHUNK_SIZE]}
        (folder / f"{n}.js").write_text(f"window.ATTNSAE_REGISTER({js_literal(payload)});\n", encoding="utf-8")


def _summary(sae: dict, folder: str, family_names: list[str]) -> dict:
    """What the feature list needs about every feature of one SAE, as columns: [d_sae] each."""
    features = sae["features"]
    for f in features:  # a family outside the bundle's labels still gets a code (and a grey badge)
        if f["family"] not in family_names:
            family_names.append(f["family"])
    code = {name: k for k, name in enumerate(family_names)}

    def first_token(pairs: list) -> int:
        return int(pairs[0][0]) if pairs else -1

    return {
        "name": sae["name"], "layer": sae["layer"], "hook_name": sae["hook_name"], "path": sae.get("path"),
        "fingerprint": sae.get("fingerprint"), "d_sae": len(features), "n_heads": sae["n_heads"],
        "d_head": sae["d_head"], "dir": folder,
        "density": [f["density"] for f in features],
        "max_act": [f["max_act"] for f in features],
        "family": [code[f["family"]] for f in features],
        "top_token": [first_token(f["top_tokens"]) for f in features],
        "top_logit": [first_token(f["logits"]["pos"]) for f in features],
    }


def read_corpus(site: str | Path) -> dict:
    """What the site's features were measured on: ``{"source", "split", "n_tokens", "context_size"}`` (``n_tokens``
    counts the positions scanned, BOS left out)."""
    return dict(_read_index(Path(site))["corpus"])


def read_summary(site: str | Path, sae: str) -> dict:
    """The index's summary of the SAE named ``sae``: its name, layer, ``d_sae``, ... and a column per feature
    (``density``, ``max_act``, ``family`` (a code into the families' names), ``top_token``, ``top_logit``: -1 where
    none), without reading any feature's data file."""
    return _sae_entry(Path(site), sae)
