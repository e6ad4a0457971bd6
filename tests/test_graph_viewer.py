"""An attnsae graph opens in circuit-tracer's own viewer: its local server (`circuit_tracer/frontend/local_server.py`,
from the installed circuit-tracer 0.5.0) serves its frontend and our `--viewer` files, and headless Chromium draws
the graph with no page error.

The viewer's page loads d3, d3-jetpack, dagre and pako from CDNs (transformer-circuits.pub, unpkg), which no
machine here can reach. The test answers those requests from npm's packages of the same libraries (d3 7.9.0 with
d3-collection 1.0.7, d3-jetpack 2.3.0, dagre 0.8.5, pako 2.1.0; `.ci/run` installs them under
$ATTNSAE_VIEWER_JS), adding the one thing the 2024 jetpack build has that 2.3.0 lacks (`c.drawAxis(svg)` on
`d3.conventions`); its live-reload client and .npy reader get empty scripts (the graph page uses neither).
"""

from __future__ import annotations

import importlib.util
import json
import os
import runpy
import socket
from pathlib import Path

import pytest

from browser import require_browser
from conftest import random_sae, run_cli

pytestmark = pytest.mark.integration

PROMPT = "result = compute_matrix(alpha, gamma)\nprint(result)\nresult = compute_matrix(alpha,"
SHIM = """
;for (const k in window.d3jp) if (!(k in window.d3)) window.d3[k] = window.d3jp[k];
(function () {  // the 2024 jetpack's conventions also give c.drawAxis(svg)
  const conventions = window.d3jp.conventions;
  window.d3.conventions = function (c) {
    c = conventions(c);
    c.drawAxis = function (svg) {
      const own = c.svg; if (svg) c.svg = svg; const out = window.d3jp.drawAxis(c); c.svg = own; return out;
    };
    return c;
  };
})();
"""


def _require(what: str, ok: bool, how: str) -> None:
    if ok:
        return
    if os.environ.get("ATTNSAE_REQUIRE_CIRCUIT_TRACER") == "1":
        pytest.fail(f"{what} is missing: {how}")
    pytest.skip(f"{what} is missing ({how})")


def libraries() -> dict[str, str]:
    """URL file name -> script text standing in for the viewer's CDN libraries."""
    root = Path(os.environ.get("ATTNSAE_VIEWER_JS", Path.home() / ".cache" / "attnsae-viewer-js")) / "node_modules"
    need = {"d3": root / "d3/dist/d3.min.js", "collection": root / "d3-collection/dist/d3-collection.js",
            "jetpack": root / "d3-jetpack/build/d3-jetpack.cjs", "dagre": root / "dagre/dist/dagre.min.js",
            "pako": root / "pako/dist/pako.min.js"}
    _require("the viewer's JavaScript libraries", all(p.is_file() for p in need.values()),
             f"npm install --prefix {root.parent} d3@7.9.0 d3-jetpack@2.3.0 d3-collection@1.0.7 dagre@0.8.5 "
             "pako@2.1.0")
    jetpack = need["jetpack"].read_text().replace("factory(global.d3 = {}, global.d3",
                                                  "factory(global.d3jp = {}, global.d3")
    return {"d3.js": need["d3"].read_text(), "jetpack_2024-07-20.js": need["collection"].read_text() + "\n" +
            jetpack + SHIM, "dagre.min.js": need["dagre"].read_text(), "pako.min.js": need["pako"].read_text()}


def test_an_attnsae_graph_opens_in_circuit_tracers_viewer(ref_model, tmp_path, browser):
    require_browser()
    spec = importlib.util.find_spec("circuit_tracer")
    _require("circuit-tracer", spec is not None and bool(spec.submodule_search_locations),
             "pip install --no-deps circuit-tracer==0.5.0")
    scripts = libraries()
    from attnsae.sae.formats import save_sae

    sae = save_sae(random_sae(ref_model, 0, d_sae=96, seed=1, architecture="topk", k=12), tmp_path / "L0")
    proc = run_cli("graph", "--sae", str(sae), "--prompt", PROMPT, "--out", str(tmp_path / "g.json"), "--viewer",
                   str(tmp_path / "viewer"), "--slug", "induction", "--no-faithfulness", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    ours = json.loads((tmp_path / "viewer" / "induction.json").read_text())

    frontend = Path(spec.submodule_search_locations[0]) / "frontend"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = runpy.run_path(str(frontend / "local_server.py"))["serve"](
        data_dir=str(tmp_path / "viewer"), frontend_dir=str(frontend / "assets"), port=port)
    try:
        page = browser.open(f"http://localhost:{port}/index.html?slug=induction", stand_ins=scripts)
        page.wait_for("document.querySelectorAll('.cg svg').length > 0")
        page.wait_for("document.querySelector('.graph-prompt-select') !== null")
        assert "attnsae" in page.evaluate("document.querySelector('.graph-prompt-select').textContent")
        assert page.errors() == [], page.errors()
        drawn = page.evaluate("document.querySelectorAll('.cg .node, .cg circle, .cg rect, .cg path').length")
        assert drawn > len(ours["nodes"]) // 2  # the viewer drew (most of) our nodes
    finally:
        server.stop()
