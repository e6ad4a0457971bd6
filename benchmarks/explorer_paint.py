"""Circuit Explorer speed as a user sees it: from the key press or click until the page has painted the answer, in
headless Chromium (Debian's ``chromium``, driven by Playwright) against the real server.

    python benchmarks/explorer_paint.py [--sae DIR ...] [--model NAME] [--tokens 128] [--repeats 20]

Defaults: the reference model with both quickstart SAEs (run ``attnsae quickstart`` first), served by uvicorn in a
thread as ``attnsae explore`` serves it. Per repeat, a prompt the server has not seen is typed and run (Ctrl+Enter)
and the time is taken until the feature chips are in the page and two animation frames have passed (painted);
then a chip of another feature is clicked and the time is taken until the DFA panel shows that feature's heatmap,
painted. It prints the median and the 90th percentile against the issue's targets (features 200 ms, a DFA click
100 ms, p90) — browser, network, server and drawing together.
"""

from __future__ import annotations

import argparse
import glob
import shutil
import statistics

import torch

from attnsae.jobs.inputs import load_saes_and_model
from attnsae.models import model_name
from attnsae.serve.app import create_app, serve_in_thread

TARGETS_MS = {"features": 200.0, "click": 100.0}
MARK_OLD = "sel => document.querySelectorAll(sel).forEach(e => e.setAttribute('data-old', ''))"
# the clock starts at the input event itself (not when Playwright starts its actionability checks)
START_CLOCK = ("for (const type of ['keydown', 'pointerdown']) document.addEventListener(type, () => "
               "{ window.__t0 = performance.now(); }, true)")


def until(page, condition: str, timeout_s: float = 60.0) -> float:
    """Milliseconds from the last key or pointer press in the page to the first animation frame at whose start
    ``condition`` holds (the frame that paints the answer), checked in the page every frame. The condition is
    inlined into the function Playwright evaluates over the DevTools protocol: the page's script policy refuses
    the string evaluation that ``wait_for_function`` would need."""
    return page.evaluate(f"""() => new Promise((resolve, reject) => {{
        const give_up = performance.now() + {timeout_s * 1000};
        const tick = (now) => {{
            if ({condition}) resolve(performance.now() - window.__t0);
            else if (performance.now() > give_up) reject(new Error("the page never showed the answer"));
            else requestAnimationFrame(tick);
        }};
        requestAnimationFrame(tick);
    }})""")


def main() -> None:
    from playwright.sync_api import sync_playwright

    from explorer_speed import prompt_of

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sae", nargs="+", default=sorted(glob.glob("attnsae-out/quickstart/saes/layer*")))
    ap.add_argument("--model", default=None)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    if not args.sae:
        raise SystemExit("no SAEs: run `attnsae quickstart` first or give --sae DIR ...")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("no chromium on PATH (apt install chromium)")
    torch.set_grad_enabled(False)
    saes, model = load_saes_and_model(args.sae, args.model, "cpu")
    url, stop = serve_in_thread(create_app(model, saes, max_sessions=4))
    times: dict[str, list[float]] = {"features": [], "click": []}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(url)
            page.wait_for_selector("#attn-head option", state="attached")
            page.evaluate(START_CLOCK)
            for rep in range(args.repeats + 1):  # the first round warms up and is dropped
                page.fill("#prompt", prompt_of(model, args.tokens, offset=1000 + rep * 11))
                page.evaluate(MARK_OLD, "#tokens .chip")
                page.press("#prompt", "Control+Enter")
                ms_features = until(page, "document.querySelector('#tokens .chip:not([data-old])')")
                chips = page.locator("#tokens .chip")
                chip = chips.nth(min(rep % 5, chips.count() - 1))
                name = f"L{chip.get_attribute('data-layer')}/{chip.get_attribute('data-feature')}"
                page.evaluate(MARK_OLD, "#dfa-heatmap")
                chip.click()
                ms_click = until(page, f"document.getElementById('feature-name')?.textContent === '{name}' && "
                                 "document.querySelector('#dfa-heatmap:not([data-old])')")
                if rep:
                    times["features"].append(ms_features)
                    times["click"].append(ms_click)
            browser.close()
    finally:
        stop()
    print(f"model {model_name(model)}: {args.tokens}-token prompts, SAEs {[s.cfg.hook_name for s in saes]}, "
          f"headless Chromium 1440x900, {args.repeats} repeats")
    print(f"{'until painted':<28}{'median ms':>11}{'p90 ms':>9}{'target ms':>11}{'ratio':>8}")
    for key, label in (("features", "features (new prompt)"), ("click", "DFA click")):
        v = sorted(times[key])
        med, p90 = statistics.median(v), v[min(len(v) - 1, round(0.9 * (len(v) - 1)))]
        print(f"{label:<28}{med:>11.1f}{p90:>9.1f}{TARGETS_MS[key]:>11.0f}{p90 / TARGETS_MS[key]:>8.2f}")


if __name__ == "__main__":
    main()
