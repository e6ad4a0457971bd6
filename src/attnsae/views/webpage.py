"""Self-contained HTML pages: inlined assets, data embedded as safe JavaScript, one page skeleton.

Shared by the dashboards (`views.dashboards`) and the head report (`views.heads_report`). The assets in
`views/assets/` (`common.css`, `common.js`, and one `.css`/`.js` pair per page) are read with importlib.resources and
inlined, so a page works from disk (file://) with no network. Everything from the data reaches the page as a
JavaScript literal (`js_literal`) and is put into the DOM with textContent, never parsed as HTML.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any


def asset(name: str) -> str:
    """Text of ``views/assets/<name>`` (a .css or .js file shipped with the package)."""
    text = resources.files("attnsae.views").joinpath("assets", name).read_text(encoding="utf-8")
    if "</script" in text.lower() or "</style" in text.lower():
        raise ValueError(f"asset {name} contains a closing tag and cannot be inlined")
    return text


def js_literal(value: Any) -> str:
    """``value`` as a JavaScript literal that is safe inside an inline <script> and in a .js file.

    JSON with every non-ASCII character escaped (so U+2028/2029 and lone surrogates cannot break the script or the
    file encoding) and ``<``, ``>``, ``&`` written as \\u escapes (so no ``</script>`` or ``<!--`` can appear).
    NaN and ±Infinity come out as the JavaScript globals of those names.
    """
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page(title: str, styles: list[str], body: str, inline_scripts: list[str],
         script_srcs: tuple[str, ...] = ()) -> str:
    """A whole HTML document: the named CSS assets inlined in <head>, ``body`` (trusted markup, no data), then the
    external scripts ``script_srcs`` (relative paths) and the inline scripts, in that order."""
    css = "\n".join(asset(name) for name in styles)
    srcs = "".join(f'<script src="{html.escape(src)}"></script>\n' for src in script_srcs)
    scripts = "".join(f"<script>\n{code}\n</script>\n" for code in inline_scripts)
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>\n{css}\n</style>\n</head>\n"
            f"<body>\n{body}\n{srcs}{scripts}</body>\n</html>\n")
