"""Circuit Explorer speed: server time for a new prompt's features and for a click, through the real app.

    python benchmarks/explorer_speed.py [--sae DIR ...] [--model NAME] [--tokens 128] [--repeats 7]

Defaults: the reference model with both quickstart SAEs (``attnsae-out/quickstart/saes/layer*``; run
``attnsae quickstart`` first). Requests go through FastAPI's TestClient to the app ``attnsae explore`` serves, so the
times include validation, the library call and JSON encoding, not the network. Measured per request, medians of
``--repeats``:

* features: ``POST /api/features`` for a prompt the server has not seen (one forward pass, every SAE, ranking);
* click: what the page asks when a feature is clicked, on a prompt already seen: ``/api/dfa``, the RDFA root
  ``/api/rdfa`` and ``/api/effect`` (each also on its own);
* intervene: ``POST /api/intervene`` (a second forward pass with the SAEs spliced in).

It prints each median and its ratio to the issue's target (features 200 ms, DFA click 100 ms, on 2 CPU cores); a
ratio under 1 meets it. The model's own forward pass on the same tokens is printed beside them for scale.
"""

from __future__ import annotations

import argparse
import glob
import inspect
import json
import statistics
import time

import torch
from fastapi.testclient import TestClient

from attnsae.jobs.inputs import load_saes_and_model
from attnsae.models import model_name
from attnsae.serve.app import create_app

TARGETS_MS = {"features": 200.0, "dfa": 100.0, "click": 100.0}


def prompt_of(model, n: int, offset: int) -> str:
    """Standard-library source cut to ``n - 1`` tokens (BOS makes n), decoded back to text."""
    source = inspect.getsource(json.decoder) + inspect.getsource(argparse) + inspect.getsource(glob)
    ids = model.tokenizer(source, add_special_tokens=False)["input_ids"][offset:offset + n - 1]
    return model.tokenizer.decode(ids)


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t) * 1000, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sae", nargs="+", default=sorted(glob.glob("attnsae-out/quickstart/saes/layer*")))
    ap.add_argument("--model", default=None)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    if not args.sae:
        raise SystemExit("no SAEs: run `attnsae quickstart` first or give --sae DIR ...")
    torch.set_grad_enabled(False)
    saes, model = load_saes_and_model(args.sae, args.model, "cpu")
    client = TestClient(create_app(model, saes, max_sessions=args.repeats + 2), base_url="http://127.0.0.1")

    def post(name: str, **body) -> dict:
        r = client.post(f"/api/{name}", json=body)
        r.raise_for_status()
        return r.json()

    times: dict[str, list[float]] = {k: [] for k in ("forward", "features", "dfa", "rdfa", "effect", "click",
                                                     "intervene")}
    n_tokens = 0
    for rep in range(args.repeats + 1):  # the first round warms up and is dropped
        prompt = prompt_of(model, args.tokens, offset=rep * 7)
        tokens = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ms_fwd, _ = timed(lambda: model(torch.tensor([[0] + tokens]), return_type="logits"))
        ms_feat, feats = timed(lambda: post("features", prompt=prompt))
        n_tokens = len(feats["tokens"])
        t = n_tokens - 1
        top = feats["rows"][t][0]
        at = {"prompt": prompt, "layer": top["layer"], "feature": top["feature"], "position": t}
        node = {"kind": "feature", "layer": top["layer"], "position": t, "feature": top["feature"], "coef": 1.0}
        ms_dfa, _ = timed(lambda: post("dfa", **at))
        ms_rdfa, _ = timed(lambda: post("rdfa", prompt=prompt, node=node))
        ms_eff, _ = timed(lambda: post("effect", **at))
        ms_click, _ = timed(lambda: (post("dfa", **at), post("rdfa", prompt=prompt, node=node), post("effect", **at)))
        ms_iv, _ = timed(lambda: post("intervene", **at, scale=0.0))
        if rep:
            for k, v in zip(times, (ms_fwd, ms_feat, ms_dfa, ms_rdfa, ms_eff, ms_click, ms_iv)):
                times[k].append(v)

    print(f"model {model_name(model)}: {n_tokens}-token prompts, SAEs at layers "
          f"{sorted(s.cfg.hook_name for s in saes)}, torch threads {torch.get_num_threads()}, "
          f"{args.repeats} repeats (medians)")
    print(f"{'request':<34}{'ms':>9}{'target ms':>11}{'ratio':>8}")
    rows = [("model forward (for scale)", "forward"), ("features (new prompt)", "features"), ("dfa", "dfa"),
            ("rdfa root", "rdfa"), ("effect", "effect"), ("click = dfa + rdfa root + effect", "click"),
            ("intervene (ablate, re-run)", "intervene")]
    for label, key in rows:
        ms = statistics.median(times[key])
        target = TARGETS_MS.get(key)
        print(f"{label:<34}{ms:>9.1f}" + (f"{target:>11.0f}{ms / target:>8.2f}" if target else ""))


if __name__ == "__main__":
    main()
