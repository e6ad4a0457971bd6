"""Circuit Explorer speed: server time for a new prompt's features, a click and a layer switch, through the real app.

    python benchmarks/explorer_speed.py [--sae DIR ...] [--model NAME] [--tokens 128] [--repeats 7]
    python benchmarks/explorer_speed.py --model smollm2-135m --random-saes 5 11 17 18 --tokens 2048 --repeats 3

Defaults: the reference model with both quickstart SAEs (``attnsae-out/quickstart/saes/layer*``; run
``attnsae quickstart`` first). ``--random-saes L ...`` puts untrained TopK SAEs (``--d-sae``, k ``--k``) on those
layers instead: a TopK SAE does the same work trained or not (k features fire per token), so the times are a trained
set's. Requests go through FastAPI's TestClient to the app ``attnsae explore`` serves, so the times include
validation, the library call and JSON encoding, not the network or the page (``explorer_paint.py`` times the page).
Measured per request, median and 90th percentile of ``--repeats`` prompts:

* features: ``POST /api/features`` for a prompt the server has not seen (one forward pass, every SAE, ranking);
* dfa / click: on a prompt already seen, ``/api/dfa`` alone and what the page asks when a feature is clicked
  (``/api/dfa``, the RDFA root ``/api/rdfa`` and ``/api/effect``);
* layer switch: ``/api/attention`` for head 0 at the last token, alternating between the two deepest SAE layers
  (and ``/api/dfa`` of each layer's top feature there): what a switch of layer in the page asks;
* intervene: ``POST /api/intervene`` (a second forward pass with the SAEs spliced in).

It prints each against the issue's target (reference model: features 200 ms, DFA click 100 ms; at 2,048 tokens on
SmolLM2: features 10 s, a DFA click 1 s, a layer switch 2 s), the model's own forward on the same tokens for scale,
and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import glob
import inspect
import json
import resource
import statistics
import tempfile
import time

import torch
from fastapi.testclient import TestClient

from attnsae.evals.interventions import Edit
from attnsae.jobs.inputs import load_saes_and_model
from attnsae.models import model_name
from attnsae.serve.app import create_app
from attnsae.serve.session import PromptSession

TARGETS_MS = {"reference": {"features": 200.0, "dfa": 100.0, "click": 100.0},
              "long": {"features": 10_000.0, "dfa": 1000.0, "click": 1000.0, "switch": 2000.0, "switch_dfa": 2000.0}}


def prompt_of(model, n: int, offset: int) -> str:
    """Standard-library source cut to ``n - 1`` tokens (BOS makes n), decoded back to text."""
    source = inspect.getsource(json.decoder) + inspect.getsource(argparse) + inspect.getsource(glob)
    source += inspect.getsource(inspect) + inspect.getsource(tempfile)
    ids = model.tokenizer(source, add_special_tokens=False)["input_ids"][offset:offset + n - 1]
    return model.tokenizer.decode(ids)


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t) * 1000, out


def random_sae_dirs(model_arg: str, layers: list[int], d_sae: int, k: int, root: str) -> list[str]:
    """Untrained TopK SAEs on ``layers`` of ``model_arg``, saved under ``root``."""
    from attnsae.models import load_model
    from attnsae.sae.formats import save_sae
    from attnsae.sae.model import SAE, SAEConfig

    model = load_model(model_arg)
    d_in = model.cfg.n_heads * model.cfg.d_head
    paths = []
    for layer in layers:
        torch.manual_seed(layer)
        sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=k, layer=layer,
                            hook_name=f"blocks.{layer}.attn.hook_z", model_name=model_name(model)))
        paths.append(f"{root}/layer{layer}")
        save_sae(sae, paths[-1])
    return paths


def tensor_bytes(obj) -> int:
    """Bytes of the distinct tensor storages reachable from ``obj`` (attributes, dicts, lists, tuples), skipping the
    model and SAE modules it refers to: what one prompt's session holds."""
    seen_objects, storages, stack = set(), {}, [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen_objects or isinstance(o, (torch.nn.Module, str, bytes, int, float)) or o is None:
            continue
        seen_objects.add(id(o))
        if isinstance(o, torch.Tensor):
            st = o.untyped_storage()
            storages[st.data_ptr()] = st.nbytes()
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set)):
            stack.extend(o)
        elif hasattr(o, "__dict__"):
            stack.extend(vars(o).values())
    return sum(storages.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sae", nargs="+", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--random-saes", nargs="+", type=int, default=None, metavar="LAYER")
    ap.add_argument("--d-sae", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    tmp = tempfile.TemporaryDirectory()
    if args.random_saes:
        paths = random_sae_dirs(args.model, args.random_saes, args.d_sae, args.k, tmp.name)
    else:
        paths = args.sae or sorted(glob.glob("attnsae-out/quickstart/saes/layer*"))
    if not paths:
        raise SystemExit("no SAEs: run `attnsae quickstart` first, or give --sae DIR ... or --random-saes LAYER ...")
    saes, model = load_saes_and_model(paths, args.model, "cpu")
    client = TestClient(create_app(model, saes, max_sessions=2), base_url="http://127.0.0.1")

    def post(name: str, **body) -> dict:
        r = client.post(f"/api/{name}", json=body)
        r.raise_for_status()
        return r.json()

    keys = ("forward", "features", "dfa", "click", "switch", "switch_dfa", "intervene")
    times: dict[str, list[float]] = {k: [] for k in keys}
    n_tokens = 0
    for rep in range(args.repeats + 1):  # the first round warms up and is dropped
        prompt = prompt_of(model, args.tokens, offset=rep * 7)
        tokens = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ms = {"forward": timed(lambda: model(torch.tensor([[0] + tokens]), return_type="logits"))[0]}
        ms["features"], feats = timed(lambda: post("features", prompt=prompt))
        n_tokens = len(feats["tokens"])
        t = n_tokens - 1
        top = {e["layer"]: e for e in reversed(feats["rows"][t])}  # each layer's top feature at the last token
        first = feats["rows"][t][0]
        at = {"prompt": prompt, "layer": first["layer"], "feature": first["feature"], "position": t}
        node = {"kind": "feature", "layer": first["layer"], "position": t, "feature": first["feature"], "coef": 1.0}
        ms["dfa"], _ = timed(lambda: post("dfa", **at))
        ms["click"], _ = timed(lambda: (post("dfa", **at), post("rdfa", prompt=prompt, node=node),
                                        post("effect", **at)))
        a, b = sorted(top)[-2:] if len(top) > 1 else (first["layer"],) * 2
        switches = [timed(lambda: post("attention", prompt=prompt, layer=l, head=0, dest=t))[0] for l in (a, b, a, b)]
        ms["switch"] = max(switches)
        ms["switch_dfa"] = max(timed(lambda: post("dfa", prompt=prompt, layer=l, feature=top[l]["feature"],
                                                  position=t))[0] for l in (a, b, a, b))
        ms["intervene"], _ = timed(lambda: post("intervene", **at, scale=0.0))
        if rep:
            for k in keys:
                times[k].append(ms[k])

    session = PromptSession(model, saes, prompt)  # the last prompt again, to weigh what a session holds
    session.features()
    session.rdfa("feature", first["layer"], t, first["feature"])
    root = session.rdfa("feature", first["layer"], t, first["feature"])["children"]
    if root and root[0].get("ref"):
        r = root[0]["ref"]
        session.rdfa(r["kind"], r["layer"], r["position"], r["feature"], r["coef"], r.get("head"), r.get("source"))
    session.intervene([Edit(first["layer"], feature=first["feature"], position=t)])
    session_bytes = tensor_bytes(session)
    long = args.tokens > 512
    targets = TARGETS_MS["long" if long else "reference"]
    print(f"model {model_name(model)}: {n_tokens}-token prompts, SAEs at layers "
          f"{sorted(s.cfg.hook_name for s in saes)}{' (untrained TopK)' if args.random_saes else ''}, "
          f"torch threads {torch.get_num_threads()}, {args.repeats} prompts (median, p90)")
    print(f"{'request':<40}{'median ms':>11}{'p90 ms':>9}{'target ms':>11}{'ratio':>8}")
    rows = [("model forward (for scale)", "forward"), ("features (new prompt)", "features"), ("dfa", "dfa"),
            ("click = dfa + rdfa root + effect", "click"), ("layer switch: attention row", "switch"),
            ("layer switch: dfa of that layer", "switch_dfa"), ("intervene (ablate, re-run)", "intervene")]
    for label, key in rows:
        v = sorted(times[key])
        med, p90 = statistics.median(v), v[min(len(v) - 1, round(0.9 * (len(v) - 1)))]
        target = targets.get(key)
        print(f"{label:<40}{med:>11.1f}{p90:>9.1f}" + (f"{target:>11.0f}{p90 / target:>8.2f}" if target else ""))
    print(f"memory: one prompt's session holds {session_bytes / 2**20:.0f} MiB of tensors (after features, "
          f"clicks, RDFA and an intervention); the process peaked at "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB resident (the model, "
          f"{len(saes)} SAEs, 2 sessions and the bridge's own forward above); ratio = p90 / target, under 1 meets it")


if __name__ == "__main__":
    main()
