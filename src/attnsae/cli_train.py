"""CLI commands of the training stage: ``attnsae train``, ``attnsae cache`` and ``attnsae quickstart``.

``train`` and ``cache`` expose every field of :class:`RunConfig` and :class:`TrainConfig` as a flag
(``--l1-coeffs 1 2``, ``--lr-schedule cosine``, ...), and read ``--config FILE`` (YAML or JSON, flat keys); flags
override the file.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from attnsae.cli import command
from attnsae.errors import AttnsaeError
from attnsae.runs import RunConfig, read_config_file
from attnsae.training import TrainConfig

_SCALARS = {"int": int, "float": float, "str": str}


def _add_dataclass_flags(p: argparse.ArgumentParser, cls, skip: set[str]) -> None:
    """One flag per dataclass field, with ``default=SUPPRESS`` so only flags the user gave are seen."""
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        t = str(f.type).replace(" ", "")
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        help = f"(default: {default})"
        kw: dict = {"default": argparse.SUPPRESS, "help": help, "dest": f.name}
        if t == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif t.startswith("list[") or t.startswith("tuple["):
            inner = t[t.index("[") + 1:].split(",")[0].rstrip("]")
            p.add_argument(flag, nargs="+", type=_SCALARS[inner], **kw)
        else:
            base = t.split("|")[0]
            p.add_argument(flag, type=_SCALARS.get(base, str), **kw)


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML or JSON file of settings (flags override it)")
    _add_dataclass_flags(p, RunConfig, skip={"train"})
    _add_dataclass_flags(p, TrainConfig, skip=set())


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    d = read_config_file(args.config) if args.config else {}
    d.update({k: v for k, v in vars(args).items() if k not in ("config", "func", "command")})
    return RunConfig.from_dict(d)


@command("train", "train attention-output SAEs (the paper's recipe by default; relu, topk or jumprelu)", _train_args)
def cmd_train(args: argparse.Namespace) -> None:
    from attnsae.runs import run_training

    cfg = run_config_from_args(args)
    saes, specs = run_training(cfg)
    for spec in specs:
        print(f"saved {cfg.out}/{spec.name}")


def _cache_args(p: argparse.ArgumentParser) -> None:
    _train_args(p)
    p.add_argument("--cache-out", required=True, help="folder to write the activation cache into")


@command("cache", "harvest hook_z activations once into an on-disk cache that `train --cache` reads", _cache_args)
def cmd_cache(args: argparse.Namespace) -> None:
    from attnsae.runs import build_cache

    out = args.cache_out
    del args.cache_out
    build_cache(run_config_from_args(args), out)
    print(f"wrote activation cache {out}")


def _quickstart_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="attnsae-out/quickstart", help="output folder")
    p.add_argument("--train-tokens", type=int, default=None, help="SAE training tokens per layer")
    p.add_argument("--eval-tokens", type=int, default=None, help="validation tokens for the summary")
    p.add_argument("--dashboard-tokens", type=int, default=None,
                   help="validation tokens scanned for the dashboards, families and head report (0: skip them)")
    p.add_argument("--seed", type=int, default=0)


@command("quickstart", "the main job on the reference model: train an SAE per layer and summarise it", _quickstart_args)
def cmd_quickstart(args: argparse.Namespace) -> None:
    from attnsae.quickstart import QuickstartConfig, run_quickstart

    cfg = QuickstartConfig(out=args.out, seed=args.seed)
    if args.train_tokens:
        cfg.train_tokens = args.train_tokens
    if args.eval_tokens:
        cfg.eval_tokens = args.eval_tokens
    if args.dashboard_tokens is not None:
        if args.dashboard_tokens < 0:
            raise AttnsaeError(f"--dashboard-tokens must be 0 or more, got {args.dashboard_tokens}")
        cfg.dashboard_tokens = args.dashboard_tokens
    run_quickstart(cfg)
