"""Attention-graph speed and size: the exact graph of a prompt, built, pruned and written.

    python benchmarks/graph_speed.py [--sae L0_PATH L1_PATH] [--repeats 3] [--smollm2]

1. **Reference model**, a 128-token prompt of standard-library source, SAEs on both layers (default: the
   quickstart's, ``attnsae-out/quickstart/saes``, else random TopK SAEs of their shape, k 32 of 2048): the median
   seconds of each step (capture and checks, edges, effects, pruning), set beside a plain matmul of the same
   floating-point work measured in the same run (the edges' roofline on this machine), and the pruned file's size.
   Target: under 5 s on 2 CPU cores.
2. With ``--smollm2`` (after ``attnsae models fetch smollm2-135m``): SmolLM2-135M, a 20-token IOI prompt with every
   layer split into heads (no SAEs of it are shipped), its build time and the process's peak memory. Target: under
   60 s and 4 GB.
"""

from __future__ import annotations

import argparse
import inspect
import json
import resource
import time
from pathlib import Path

import torch
from attribution_speed import timed  # this folder's shared timer (median after a warm-up)

import attnsae
from attnsae.graph.build import build_from
from attnsae.graph.files import graph_dict
from attnsae.graph.frozen import FrozenPrompt
from attnsae.graph.prune import prune
from attnsae.graph.target import TargetSpec, resolve
from attnsae.io import json_text
from attnsae.models import model_name
from attnsae.sae.formats import load_sae
from attnsae.sae.model import SAE, SAEConfig

QUICKSTART = Path("attnsae-out/quickstart/saes")
IOI = "When Mary and John went to the store after a long day at work, John gave a drink to"  # 20 tokens + BOS


def stdlib_tokens(model, n: int) -> torch.Tensor:
    source = inspect.getsource(json.decoder)
    ids = model.tokenizer(source, add_special_tokens=False)["input_ids"][:n - 1]
    return torch.tensor([[model.tokenizer.bos_token_id or 0] + ids])


def reference_saes(model, paths: list[str] | None) -> tuple[dict[int, SAE], str]:
    if paths:
        return {i: load_sae(p) for i, p in enumerate(paths)}, "given"
    found = sorted(QUICKSTART.glob("layer*_topk_*")) if QUICKSTART.exists() else []
    if len(found) == 2:
        return {i: load_sae(p) for i, p in enumerate(found)}, "the quickstart's"
    c = model.cfg
    torch.manual_seed(0)
    return {layer: SAE(SAEConfig(d_in=c.n_heads * c.d_head, d_sae=2048, architecture="topk", k=32,
                                 hook_name=f"blocks.{layer}.attn.hook_z", model_name=model_name(model)))
            for layer in (0, 1)}, "random TopK (k 32 of 2048)"


def edge_flops(fp: FrozenPrompt, graph) -> float:
    """Multiply-adds of the edges' matmuls: per reader, its sources times n_heads * d_head (x2 for FLOPs)."""
    per_edge = 2 * fp.W[0].n_heads * fp.W[0].d_head
    return float(graph.n_edges) * per_edge


def reference(args) -> None:
    model = attnsae.load_model()
    saes, which = reference_saes(model, args.sae)
    tokens = stdlib_tokens(model, 128)
    t_capture, fp = timed(lambda: FrozenPrompt(model, saes, tokens), args.repeats)
    tgt = resolve(TargetSpec(), fp, model.tokenizer)
    t_build, g = timed(lambda: build_from(model, fp, tgt, progress=False), args.repeats)
    t_prune, pruned = timed(lambda: prune(g), args.repeats)
    text = json_text(graph_dict(g, pruned, 0.8, 0.98))
    flops = edge_flops(fp, g)
    n = int(round((flops / 2) ** (1 / 3)))  # a square matmul of the same work
    a, b = torch.randn(n, n), torch.randn(n, n)
    t_mm, _ = timed(lambda: a @ b, args.repeats)
    total = t_capture + t_build + t_prune
    print(f"reference model, 128 tokens, SAEs on both layers ({which}), {torch.get_num_threads()} threads:")
    print(f"  {g.n_nodes:,} nodes, {g.n_edges:,} edges, closure {g.closure:.1e}")
    print(f"  capture + checks {t_capture:.2f} s, edges + effects {t_build:.2f} s, pruning {t_prune:.2f} s: "
          f"{total:.2f} s in all ({total / 5:.2f} of the 5 s target)")
    print(f"  edges: {flops / 1e9:.1f} GFLOP in matmuls; a plain {n}x{n} matmul of that work takes {t_mm:.3f} s: "
          f"the build is {t_build / t_mm:.1f}x that roofline")
    print(f"  pruned file {len(text) / 1e3:,.0f} kB ({int(pruned.node_mask.sum())} nodes, "
          f"{int(pruned.edge_mask.sum())} edges; the unpruned graph would be {g.n_edges:,} edges)")


def smollm2(args) -> None:
    from attnsae.attribution.inputs import tokenize
    from attnsae.models import load_model

    t0 = time.perf_counter()
    model = load_model("smollm2-135m")
    t_load = time.perf_counter() - t0
    tokens = tokenize(model, IOI)[0]
    t0 = time.perf_counter()
    fp = FrozenPrompt(model, {}, tokens)
    g = build_from(model, fp, resolve(TargetSpec.parse([" Mary", "-", " John"]), fp, model.tokenizer),
                   progress=False)
    pruned = prune(g)
    t_graph = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    size = len(json_text(graph_dict(g, pruned, 0.8, 0.98)))
    print(f"SmolLM2-135M, IOI prompt ({tokens.shape[1]} tokens), every layer split into heads:")
    print(f"  {g.n_nodes:,} nodes, {g.n_edges:,} edges; graph {t_graph:.1f} s ({t_graph / 60:.2f} of the 60 s target; "
          f"model load {t_load:.1f} s more), peak memory {peak:.2f} GB ({peak / 4:.2f} of the 4 GB target), pruned "
          f"file {size / 1e6:.2f} MB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sae", nargs=2, default=None, metavar="PATH", help="the SAEs of layers 0 and 1")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smollm2", action="store_true", help="also SmolLM2-135M on the IOI prompt")
    args = p.parse_args()
    reference(args)
    if args.smollm2:
        smollm2(args)


if __name__ == "__main__":
    main()
