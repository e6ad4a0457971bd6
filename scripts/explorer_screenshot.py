"""The README's Circuit Explorer screenshot: the reference model's quickstart SAEs on an induction example.

    python scripts/explorer_screenshot.py [--out docs/explorer.png] [--width 1280 --height 800]

Needs ``attnsae quickstart`` (its SAEs and dashboards) and Debian's chromium. Serves the explorer in-process, asks
the API for the strongest layer-1 *induction* feature on the repeated tokens of the prompt, opens the page at that
selection (DFA, the RDFA root expanded, the top head's attention from that token) and screenshots it. Prints the
URL hash it opened, so the view can be reproduced by hand.
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
    args = ap.parse_args()
    saes, model = load_saes_and_model(sorted(glob.glob("attnsae-out/quickstart/saes/layer*")), None, "cpu")
    app = create_app(model, saes, "attnsae-out/quickstart/dashboard")
    pick = induction_pick(TestClient(app))
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


if __name__ == "__main__":
    main()
