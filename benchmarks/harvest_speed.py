"""Harvest speed: ``harvest_z`` (the TransformerBridge forward with hooks, stopped at the deepest hook_z) against the
Hugging Face model's own forward stopped at the same point, on the same tokens, interleaved.

    python benchmarks/harvest_speed.py [--models reference smollm2-135m] [--batch 32] [--context 128] [--repeats 7]

The peer is the HF model that the bridge wraps, loaded from the same folder: forward pre-hooks on each needed
layer's attention output projection (``c_proj`` / ``o_proj``, whose input is hook_z with heads concatenated)
capture z and stop the pass at the deepest one, so both sides compute exactly the same thing and neither runs W_O,
the MLP after it, later blocks or the unembedding. Per model and layer set it prints the medians and the speed ratio
ours / HF (issue 16's target: at least 0.9), from rounds that alternate the two. SmolLM2 is fetched and converted on
first use, as everywhere in attnsae (``attnsae models fetch smollm2-135m``); a model that cannot be had is skipped.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM

from attnsae.activations import StopForward, harvest_z
from attnsae.corpus import load_corpus
from attnsae.models import load_model, resolve_model_path


def out_projections(hf) -> list[torch.nn.Module]:
    """Each block's attention output projection (its input is z with heads concatenated), GPT-2 or Llama layout."""
    if hasattr(hf, "transformer"):
        return [block.attn.c_proj for block in hf.transformer.h]
    return [layer.self_attn.o_proj for layer in hf.model.layers]


def hf_harvest(hf, tokens: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
    """z_cat of ``layers`` from the HF forward, stopped at the deepest one: {layer: [batch * pos, d_in]}."""
    out: dict[int, torch.Tensor] = {}
    last, projs = max(layers), out_projections(hf)

    def grab(layer: int):
        def pre_hook(module, args):
            out[layer] = args[0].reshape(-1, args[0].shape[-1]).detach()
            if layer == last:
                raise StopForward

        return pre_hook

    handles = [projs[l].register_forward_pre_hook(grab(l)) for l in layers]
    try:
        hf(tokens)
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return out


def time_into(times: list[float], fn, tokens, layers) -> None:
    """Run ``fn(tokens, layers)`` once and append its wall time in ms to ``times``."""
    t = time.perf_counter()
    fn(tokens, layers)
    times.append((time.perf_counter() - t) * 1000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["reference", "smollm2-135m"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    print(f"{args.batch} x {args.context} tokens per call, torch threads {torch.get_num_threads()}, "
          f"{args.repeats} interleaved rounds (medians)")
    print(f"{'model':<16}{'layers':<12}{'attnsae ms':>11}{'HF ms':>9}{'ours/HF speed':>15}")
    for name in args.models:
        try:
            folder = resolve_model_path(None if name == "reference" else name)
        except Exception as e:  # not cached: say so and go on
            print(f"{name:<16}skipped: {e}")
            continue
        model = load_model(folder)
        hf = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
        corpus = load_corpus(model.tokenizer, "stdlib", "validation", args.context,
                             max_tokens=args.batch * args.context, progress=False)
        tokens = torch.from_numpy(corpus.tokens[:args.batch])
        n = model.cfg.n_layers
        for layers in ([n - 1], list(range(n))) if n > 2 else (list(range(n)),):
            ours, theirs = [], []
            a, b = harvest_z(model, tokens, layers), hf_harvest(hf, tokens, layers)  # warm up, and agree
            for l in layers:  # fp32 rounding of two attention implementations, grown over up to 30 layers
                torch.testing.assert_close(a[l], b[l], rtol=1e-3, atol=1e-4 * float(b[l].abs().max()))
            for _ in range(args.repeats):
                time_into(ours, lambda t, ls: harvest_z(model, t, ls), tokens, layers)
                time_into(theirs, lambda t, ls: hf_harvest(hf, t, ls), tokens, layers)
            o, h = statistics.median(ours), statistics.median(theirs)
            label = f"{layers[0]}..{layers[-1]}" if len(layers) > 1 else str(layers[0])
            print(f"{name:<16}{label:<12}{o:>11.1f}{h:>9.1f}{h / o:>15.2f}")


if __name__ == "__main__":
    main()
