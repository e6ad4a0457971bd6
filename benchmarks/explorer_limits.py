"""Circuit Explorer limits: how long the most expensive requests its bounds allow hold the model lock.

    python benchmarks/explorer_limits.py [--sae DIR ...] [--model NAME]

Defaults: the reference model with both quickstart SAEs (``attnsae-out/quickstart/saes/layer*``). Every request is
made on a fresh app, so each pays for its prompt's first forward pass too, at the model's full context (n_ctx tokens
with BOS): features and compare with the largest k :data:`~attnsae.serve.schemas.MAX_ANSWER_ITEMS` allows, an
intervention at every position, DFA at the last token, and the graph of the top prediction (leaf and linear MLPs, the
default pruning), the one request that grows with the prompt's length squared: refused at full context when it would
pass :data:`~attnsae.serve.schemas.MAX_GRAPH_EDGES` edges, then asked again on the longest prompt (in steps of 8
tokens) that it is allowed on. For each it prints the status, the time the request held the model
(``app.state.model_lock.longest_s``), the answer's size and the process's peak memory so far; then the longest hold,
the figure docs/explorer.md states.
"""

from __future__ import annotations

import argparse
import glob
import resource

import torch
from explorer_speed import prompt_of  # this folder's prompt of standard-library source
from fastapi.testclient import TestClient

from attnsae.jobs.inputs import load_saes_and_model
from attnsae.models import model_name, n_ctx
from attnsae.serve import schemas as S
from attnsae.serve.app import create_app


def requests(n: int, n_layers: int, last: int) -> list[tuple[str, str, dict]]:
    """(label, path, body without the prompt) of the most expensive requests allowed on an n-token prompt."""
    k_features = min(S.MAX_K, S.MAX_ANSWER_ITEMS // (n * n_layers))
    return [("features, a new prompt, k=%d" % k_features, "/api/features", {"k": k_features}),
            ("compare, two new prompts, k=%d" % k_features, "/api/compare", {"k": k_features, "other": None}),
            ("intervene at every position, k=200", "/api/intervene",
             {"layer": last, "feature": 0, "position": None, "scale": 0.0, "k": S.MAX_K}),
            ("dfa at the last token", "/api/dfa", {"layer": last, "feature": 0, "position": n - 1}),
            ("graph, leaf MLPs", "/api/graph", {"mlp": "leaf"}),
            ("graph, linear MLPs", "/api/graph", {"mlp": "linear"})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sae", nargs="+", default=sorted(glob.glob("attnsae-out/quickstart/saes/layer*")))
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    if not args.sae:
        raise SystemExit("no SAEs: run `attnsae quickstart` first or give --sae DIR ...")
    torch.set_grad_enabled(False)
    saes, model = load_saes_and_model(args.sae, args.model, "cpu")
    n = n_ctx(model)
    prompt, other = prompt_of(model, n, 0), prompt_of(model, n, 4 * n)
    layers = sorted(s.cfg.layer for s in saes)
    print(f"{model_name(model)}, SAEs on layers {layers}, prompts of {n} tokens; torch threads "
          f"{torch.get_num_threads()}")
    holds = []

    def ask(label: str, path: str, body: dict) -> int:
        app = create_app(model, saes)
        r = TestClient(app, base_url="http://127.0.0.1").post(path, json=body)
        holds.append(app.state.model_lock.longest_s)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        note = "" if r.status_code == 200 else "  " + r.json()["detail"]
        print(f"  {label:48s} {r.status_code}  held {holds[-1]:6.2f} s  answer {len(r.content) / 1e6:6.2f} MB  "
              f"peak memory {rss:5.2f} GB{note}", flush=True)
        return r.status_code

    for label, path, body in requests(n, len(layers), layers[-1]):
        body = {**body, "prompt": prompt} | ({"other": other} if "other" in body else {})
        m = n
        while ask(f"{label} ({m} tokens)", path, body) == 400 and path == "/api/graph" and m > 8:
            m -= 8  # the longest prompt whose graph is allowed
            body["prompt"] = prompt_of(model, m, 0)
    print(f"longest hold of the model lock: {max(holds):.1f} s (LOCK_WAIT_S = {S.LOCK_WAIT_S:g} s)")


if __name__ == "__main__":
    main()
