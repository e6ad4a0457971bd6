"""Attribution speed on the reference model: DFA for one 128-token prompt and RDFA to depth 2 with top-5 branching.

    python benchmarks/attribution_speed.py [--sae PATH --upstream-sae PATH] [--l0 32] [--repeats 7]

Without ``--sae`` the layer-1 SAE (and the layer-0 one RDFA splits attention into) is random with d_sae 2048 (the
quickstart's 8 x 256) and TopK with k = ``--l0``, so that as many features fire per token as in a trained SAE.
Prints medians side by side: our DFA against the naive materialising implementation (the public dashboard code's
``[batch, dest, src, d_in]`` tensor), and the model's own forward pass for scale. Targets on 2 CPU cores: DFA of all
active features under 100 ms, RDFA under 1 s.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import time

import torch

import attnsae
from attnsae.attribution import RDFATracer, attn_activations, dfa_from_activations, dfa_reference
from attnsae.models import model_name
from attnsae.sae.model import SAE, SAEConfig
from attnsae.sae.formats import load_sae


def text_tokens(model, n: int, offset: int = 0) -> torch.Tensor:
    """``[BOS] + n - 1`` tokens of standard-library source: int64 [1, n]."""
    source = inspect.getsource(json.decoder) + inspect.getsource(argparse)
    ids = model.tokenizer(source, add_special_tokens=False)["input_ids"][offset:offset + n - 1]
    return torch.tensor([[model.tokenizer.bos_token_id or 0] + ids])


def random_sae(model, layer: int, d_sae: int, l0: int, seed: int) -> SAE:
    """A random TopK SAE: exactly ``l0`` features fire per token (DFA and RDFA do not depend on the activation)."""
    torch.manual_seed(seed)
    c = model.cfg
    return SAE(SAEConfig(d_in=c.n_heads * c.d_head, d_sae=d_sae, architecture="topk", k=l0,
                         hook_name=f"blocks.{layer}.attn.hook_z", model_name=model_name(model)))


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds over ``repeats`` calls after one warm-up, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def measure(model, tokens, sae, up, repeats: int) -> tuple[dict[str, float], dict]:
    """Median seconds of each step, and facts about the run."""
    t_fwd, acts = timed(lambda: attn_activations(model, tokens, 1), repeats)
    t_dfa, res = timed(lambda: dfa_from_activations(acts, sae), repeats)
    t_naive, _ = timed(lambda: dfa_reference(acts, sae), max(1, repeats // 2))
    t_capture, tracer = timed(lambda: RDFATracer(model, sae, tokens, [up]), repeats)
    feature = int(res.feature[res.act.argmax()])  # the strongest activation on the prompt
    t_trace, tree = timed(lambda: tracer.trace(feature, depth=2, top_k=5), repeats)
    times = {"forward": t_fwd, "dfa": t_dfa, "naive": t_naive, "capture": t_capture, "trace": t_trace,
             "rdfa": t_capture + t_trace}
    facts = {"entries": len(res), "workspace": res.workspace_bytes, "bound": res.workspace_bound,
             "nodes": sum(1 for _ in tree.root.walk()), "residual": tree.max_relative_residual()}
    return times, facts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sae", default=None, help="a layer-1 SAE of the reference model (default: random, d_sae 2048)")
    p.add_argument("--upstream-sae", default=None, help="a layer-0 SAE (default: random, d_sae 2048)")
    p.add_argument("--l0", type=int, default=32, help="features firing per token in the random (TopK) SAEs")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="torch intra-op thread counts to compare (default: 1 2)")
    args = p.parse_args()

    model = attnsae.load_model()
    tokens = text_tokens(model, 128)
    sae = load_sae(args.sae) if args.sae else random_sae(model, 1, 2048, args.l0, seed=1)
    up = load_sae(args.upstream_sae) if args.upstream_sae else random_sae(model, 0, 2048, args.l0, seed=0)
    runs = {}
    for n in args.threads:
        torch.set_num_threads(n)
        runs[n] = measure(model, tokens, sae, up, args.repeats)
    facts = runs[args.threads[0]][1]

    print(f"reference model, 1 x {tokens.shape[1]} tokens, layer 1, d_sae {sae.cfg.d_sae}; medians of {args.repeats}")
    print(f"active entries (dest, feature): {facts['entries']} (L0 {facts['entries'] / tokens.shape[1]:.1f}); "
          f"DFA workspace {facts['workspace'] / 2**20:.1f} MiB (stated bound {facts['bound'] / 2**20:.1f} MiB); "
          f"RDFA {facts['nodes']} nodes, worst closure error {facts['residual']:.1e} of the terms' magnitude")
    head = "".join(f"{f'ms, {n} thr':>13}" for n in args.threads)
    print(f"{'step':<46}{head}{'target':>9}  vs naive")
    rows = [("forward to layer 1, capture v/pattern/z", "forward", ""),
            ("DFA, all active features (ours)", "dfa", "100"),
            ("DFA, naive materialising reference", "naive", ""),
            ("RDFA capture + checks (forward, all hooks)", "capture", ""),
            ("RDFA trace, depth 2, top-5", "trace", ""),
            ("RDFA total (capture + trace)", "rdfa", "1000")]
    for name, key, target in rows:
        cells = "".join(f"{runs[n][0][key] * 1e3:>13.1f}" for n in args.threads)
        ratio = ""
        if key in ("dfa", "naive"):
            ratio = "  " + " ".join(f"{runs[n][0]['naive'] / runs[n][0][key]:.1f}x" for n in args.threads)
        print(f"{name:<46}{cells}{target:>9}{ratio}")


if __name__ == "__main__":
    main()
