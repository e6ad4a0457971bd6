"""CLI of the attribution stage: ``attnsae attribute`` explains one feature on one prompt.

It prints the feature's activation, its top source positions and (source, head) pairs by DFA, the RDFA tree and the
direct logit effect; ``--json`` prints :meth:`attnsae.attribution.AttributionReport.to_dict` instead.
"""

from __future__ import annotations

import argparse

from attnsae.cli import command, model_for_sae, print_json


def _attribute_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sae", required=True, help="SAE on blocks.{L}.attn.hook_z: a SAELens folder, .pt or hub path")
    p.add_argument("--prompt", required=True, help="text to explain (BOS is prepended as in training)")
    p.add_argument("--feature", required=True, type=int, help="feature index")
    p.add_argument("--position", type=int, default=None, help="token position (default: where the feature is largest)")
    p.add_argument("--model", default=None,
                   help="model (default: the SAE's own model when it is the reference model or a local folder)")
    p.add_argument("--upstream-sae", nargs="+", default=[], metavar="PATH",
                   help="SAEs of earlier layers: RDFA splits those attention outputs into their features")
    p.add_argument("--depth", type=int, default=2, help="RDFA depth (value-path decompositions per branch)")
    p.add_argument("--top-k", type=int, default=5, help="RDFA branching: terms expanded per node")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")


@command("attribute", "explain a feature on a prompt: DFA by source and head, recursive DFA, logit effect",
         _attribute_args)
def cmd_attribute(args: argparse.Namespace) -> None:
    from attnsae.attribution import attribute
    from attnsae.attribution.inputs import check_features, sae_layer
    from attnsae.models import load_model
    from attnsae.sae_io import load_sae

    sae = load_sae(args.sae, device=args.device)
    sae_layer(sae)  # refuse an SAE on another hook, or a bad feature, before loading the model
    check_features(sae, args.feature)
    upstream = [load_sae(p, device=args.device) for p in args.upstream_sae]
    model = load_model(model_for_sae(sae, args.model), device=args.device)
    report = attribute(model, sae, args.prompt, args.feature, args.position, depth=args.depth, top_k=args.top_k,
                       upstream_saes=upstream)
    if args.json:
        print_json(report.to_dict())
        return
    print_report(report)


def print_report(report) -> None:
    r = report.rdfa
    strs = r.token_strs
    t = report.position
    print(f"feature {report.feature} of blocks.{report.layer}.attn.hook_z at position {t} {strs[t]!r}: "
          f"activation {report.activation:.4g}")
    print(f"  pre-activation {report.pre_activation:.4g} = DFA {sum(r.by_src):.4g} + bias {report.bias:.4g}")
    if report.activation == 0:
        print("  (the feature does not fire here; without --position this is where its pre-activation is largest)")
    print("top sources (DFA summed over heads):")
    for row in report.top_sources(8):
        print(f"  {row['value']:+10.4f}  pos {row['source']:>3}  {row['token']!r}")
    print("by head:  " + "  ".join(f"h{h} {v:+.3f}" for h, v in enumerate(r.by_head)))
    print(f"RDFA tree (depth {r.depth}, top-k {r.top_k}; worst closure error {report.max_relative_residual:.1e} "
          "of the terms' magnitude):")
    _print_node(r.root, strs, indent=1)
    lg = report.logits
    print("direct logit effect:")
    print("  up:   " + "  ".join(f"{s!r} {v:+.3f}" for s, v in zip(lg.top_strs, lg.top_values)))
    print("  down: " + "  ".join(f"{s!r} {v:+.3f}" for s, v in zip(lg.bottom_strs, lg.bottom_values)))


def _label(node, strs: list[str]) -> str:
    if node.kind == "head_source":
        return f"{node.name}: {node.position} <- {node.source} {strs[node.source]!r}"
    if node.kind == "feature":
        return f"{node.name} @ {node.position} {strs[node.position]!r} (act {node.activation:.3g})"
    return f"{node.name} @ {node.position}"


def _print_node(node, strs: list[str], indent: int) -> None:
    pad = "  " * indent
    print(f"{pad}{node.value:+10.4f}  {_label(node, strs)}")
    for child in sorted(node.children, key=lambda c: -abs(c.value)):
        _print_node(child, strs, indent + 1)
    for name, value in node.remainders.items():
        print(f"{pad}  {value:+10.4f}  ({name})")
