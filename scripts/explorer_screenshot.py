"""The README's Circuit Explorer screenshot: the reference model's quickstart SAEs on an induction example.

    python scripts/explorer_screenshot.py [--out docs/explorer.png] [--width 1280 --height 800]
    python scripts/explorer_screenshot.py --graph [--out docs/graphs/explorer-graph.png]

Needs ``attnsae quickstart`` (its SAEs and dashboards) and Debian's chromium. Serves the explorer in-process, asks
the API for the strongest layer-1 *induction* feature on the repeated tokens of the prompt, opens the page at that
selection (DFA, the RDFA root expanded, the top head's attention from that token) and screenshots it. Prints the
URL hash it opened, so the view can be reproduced by hand. With ``--graph``: the Graph view of docs/graphs.md's
induction prompt (MLPs linear), with the QK split of the induction head's edge from the copied token.
"""

from __future__ import annotations

import argparse
import glob
from urllib.parse import urlencode

from fastapi.testclient import TestClient
from playwright.sync_api import sync_playwright

from attnsae.jobs.inputs import load_saes_and_model
from attnsae.serve.app import create_app, serve_in_thread

PROMPT = ("import os\nimport sys\n\ndef main(argv):\n    path = os.path.join(argv[0], 'x')\n"
          "    return os.path.join(path, sys.argv[1])\n")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]


def induction_pick(client: TestClient) -> dict:
    """The layer-1 induction chip with the largest activation at a position whose token occurred before."""
    f = client.post("/api/features", json={"prompt": PROMPT, "k": 8}).json()
    toks = f["tokens"]
    best = None
    for t, row in enumerate(f["rows"]):
        if toks[t] not in toks[:t]:
            continue
        for e in row:
            if e["layer"] == 1 and e["family"] == "induction" and (best is None or e["act"] > best["act"]):
                best = {**e, "position": t}
    if best is None:
        raise SystemExit("no layer-1 induction feature fires on the example: are these the quickstart SAEs?")
    d = client.post("/api/dfa", json={"prompt": PROMPT, "layer": 1, "feature": best["feature"],
                                      "position": best["position"]}).json()
    best["head"] = max(range(len(d["by_head"])), key=lambda h: d["by_head"][h])
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/explorer.png")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=800)
    ap.add_argument("--browser", default="/usr/bin/chromium")
    ap.add_argument("--graph", action="store_true", help="the Graph view instead")
    args = ap.parse_args()
    if args.graph:
        graph_shot(args)
        return
    saes, model = load_saes_and_model(sorted(glob.glob("attnsae-out/quickstart/saes/layer*")), None, "cpu")
    app = create_app(model, saes, "attnsae-out/quickstart/dashboard")
    pick = induction_pick(TestClient(app, base_url="http://127.0.0.1"))
    t = pick["position"]
    hash_ = urlencode({"p": PROMPT, "f": f"1/{pick['feature']}@{t}", "al": 1, "ah": pick["head"], "ad": t,
                       "ex": "0"})
    base, stop = serve_in_thread(app)
    url = f"{base}#{hash_}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.browser, args=FLAGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(url)
        page.wait_for_selector("#identity-error")
        page.wait_for_selector("#rdfa-tree .rdfa-node[data-kind='head_source']")
        page.wait_for_timeout(500)
        page.screenshot(path=args.out)
        browser.close()
    stop()
    print(f"feature L1/{pick['feature']} ({pick['family']}) at position {t}, head L1H{pick['head']}: {args.out}")
    print(f"view: #{hash_}")


GRAPH_PROMPT = "result = compute_matrix(alpha, gamma)\nprint(result)\nresult = compute_matrix(alpha,"


def graph_shot(args) -> None:
    """The Graph view of GRAPH_PROMPT through the quickstart SAEs, an induction head's edge explained."""
    saes, model = load_saes_and_model(sorted(glob.glob("attnsae-out/quickstart/saes/layer*"))[:1], None, "cpu")
    app = create_app(model, saes, "attnsae-out/quickstart/dashboard")
    base, stop = serve_in_thread(app)
    out = args.out if args.out != "docs/explorer.png" else "docs/graphs/explorer-graph.png"
    url = f"{base}#{urlencode({'p': GRAPH_PROMPT, 'g': 1})}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.browser, args=FLAGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(url)
        page.select_option("#graph-mlp", "linear")
        page.click("#graph-run")
        page.wait_for_selector("#graph-svg circle.gnode")
        edge = page.locator('#graph-svg line.gedge[data-target^="L1.H1@"]').first
        edge.dispatch_event("click")
        page.wait_for_selector('#graph-qk .qk-side[data-side="key"]')
        page.locator("#graph-card").screenshot(path=out)
        browser.close()
    stop()
    print(f"graph view of the induction prompt: {out}")


if __name__ == "__main__":
    main()
