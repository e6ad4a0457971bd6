"""The head report as one self-contained HTML file: per attention head, is it monosemantic, and which features.

The input is a *report*, plain data built upstream::

    report = {
      "title": str, "model": str, "criterion": str,
      "summary": str,                                   # e.g. "5 of 16 heads polysemantic"
      "heads": [{
        "layer": int, "head": int, "sae": str,          # the SAE (by name) whose features are listed
        "verdict": "monosemantic" | "polysemantic", "score": float,
        "dominant_family": str, "dominant_share": float,
        "features": [{"i": int, "share": float, "family": str, "density": float,
                      "top_tokens": [str], "logits_pos": [str], "logits_neg": [str]}],
      }],
    }

Each feature index links to its dashboard, ``{dashboards_href}#{sae}/{i}`` (``index.html#L1/123``). The page embeds
the report as a JavaScript literal and draws it with the shared helpers (`views/assets/common.js`).
"""

from __future__ import annotations

from pathlib import Path

from attnsae.io import atomic_path
from attnsae.views.numbers import compact
from attnsae.views.webpage import asset, js_literal, page

BODY = """\
<header class="topbar" id="topbar"></header>
<main class="report">
  <section id="summary" class="summary"></section>
  <section id="heads" class="heads"></section>
</main>"""


def write_head_report(report: dict, path: Path, dashboards_href: str = "index.html") -> Path:
    """Write the head report to ``path`` (atomically); feature links point at ``dashboards_href``. Returns path."""
    path = Path(path)
    data = (f"window.ATTNSAE_REPORT = {js_literal(compact(report))};\n"
            f"window.ATTNSAE_DASHBOARDS = {js_literal(dashboards_href)};")
    html = page(report["title"], ["common.css", "heads_report.css"], BODY,
                [data, asset("common.js"), asset("heads_report.js")])
    with atomic_path(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return path
