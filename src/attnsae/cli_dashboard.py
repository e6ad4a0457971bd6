"""CLI of the reading stage: ``attnsae dashboard`` writes feature dashboards, feature families and the head report.

Scans ``--n-tokens`` tokens of a corpus split for every feature of the given SAEs and writes the site of
:mod:`attnsae.views.site` into ``--out`` (atomically), then prints the families table, the head summary line and
the path to open.
"""

from __future__ import annotations

import argparse

from attnsae.cli import add_corpus_args, command, load_checked_saes, load_tokens, model_for_sae, sae_names
from attnsae.errors import AttnsaeError


def _dashboard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sae", nargs="+", required=True, metavar="PATH",
                   help="SAEs on blocks.{L}.attn.hook_z of one model (SAELens folders, paper .pt files, hub paths)")
    p.add_argument("--model", default=None,
                   help="model (default: the SAEs' own model when it is the reference model or a local folder)")
    p.add_argument("--device", default="cpu")
    add_corpus_args(p, split="validation")
    p.add_argument("--n-tokens", type=int, default=262_144, help="tokens to scan (whole contexts, BOS included)")
    p.add_argument("--out", default="attnsae-out/dashboard", help="output folder (replaced whole when done)")
    p.add_argument("--n-top", type=int, default=16, help="top activating examples per feature")
    p.add_argument("--n-bands", type=int, default=4, help="activation quantile bands")
    p.add_argument("--per-band", type=int, default=3, help="examples per quantile band")
    p.add_argument("--batch-size", type=int, default=32, help="contexts per forward pass while scanning")
    p.add_argument("--neuronpedia", action="store_true", help="also write a Neuronpedia export into OUT/neuronpedia")
    p.add_argument("--seed", type=int, default=0, help="seed of the quantile-band sampling")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def dashboard_config(args: argparse.Namespace):
    from attnsae.dashboards import DashboardConfig
    from attnsae.scan import ScanConfig

    for flag in ("n_top", "n_bands", "batch_size"):
        if getattr(args, flag) < 1:
            raise AttnsaeError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.per_band < 0:
        raise AttnsaeError(f"--per-band must be 0 or more, got {args.per_band}")
    return DashboardConfig(scan=ScanConfig(n_top=args.n_top, batch_size=args.batch_size, seed=args.seed),
                           n_bands=args.n_bands, per_band=args.per_band)


@command("dashboard", "feature dashboards (top examples with DFA), feature families and head polysemanticity",
         _dashboard_args)
def cmd_dashboard(args: argparse.Namespace) -> None:
    import torch

    from attnsae.io_utils import check_writable_dir
    from attnsae.models import load_model
    from attnsae.sae_io import load_sae
    from attnsae.views.site import write_site

    if args.n_tokens < 1:
        raise AttnsaeError(f"--n-tokens must be positive, got {args.n_tokens}")
    cfg = dashboard_config(args)
    out = check_writable_dir(args.out)
    saes = [load_sae(p, device=args.device) for p in args.sae]
    model = load_model(model_for_sae(saes[0], args.model), device=args.device)
    load_checked_saes(args.sae, model, saes=saes)
    tokens = torch.from_numpy(load_tokens(args, model, args.n_tokens, args.progress))
    summary = write_site(model, saes, tokens, out, cfg, names=sae_names(args.sae),
                         corpus={"source": args.source, "split": args.split}, neuronpedia=args.neuronpedia,
                         progress=args.progress, paths=[str(p) for p in args.sae])
    print_summary(summary)


def print_summary(summary: dict) -> None:
    print(summary["families_table"])
    print(f"\n{summary['heads']}")
    print(f"\nopen {summary['index']}  (heads: {summary['heads_html']})")
