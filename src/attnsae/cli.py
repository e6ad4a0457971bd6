"""The ``attnsae`` command. Thin: parse, call one library function, print.

Every user error is an :class:`AttnsaeError`: printed as one line ``attnsae: error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

from attnsae.errors import AttnsaeError

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]] = {}


def command(name: str, help: str, add_args: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    """Register ``fn(args)`` as the subcommand ``name``; ``add_args(parser)`` adds its flags."""

    def wrap(fn):
        COMMANDS[name] = (help, add_args, fn)
        return fn

    return wrap


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="model: omit for the shipped reference model, or a local HF-format directory, or a hub name")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def add_corpus_args(p: argparse.ArgumentParser, split: str = "train") -> None:
    p.add_argument("--source", default="stdlib",
                   help="'stdlib', a local .txt/.jsonl/.parquet file or folder, or a Hugging Face dataset name")
    p.add_argument("--split", default=split, choices=["train", "validation"])
    p.add_argument("--text-field", default="text", help="text column for .jsonl / .parquet / HF datasets")
    p.add_argument("--context-size", type=int, default=128)
    p.add_argument("--no-bos", dest="prepend_bos", action="store_false", help="do not force BOS at position 0")


def model_for_sae(sae, given: str | None) -> str | None:
    """``--model`` if given; else the SAE's model when it can be loaded offline; else the reference model."""
    from attnsae.reference import REFERENCE_NAME

    if given is not None:
        return given
    name = sae.cfg.model_name
    if name == REFERENCE_NAME or (name and Path(name).is_dir()):
        return name
    return None


def load_checked_saes(paths: list[str], model, device: str = "cpu", saes: list | None = None) -> list:
    """Load SAEs (unless given) and refuse any that does not fit ``model``, naming its path."""
    from attnsae.sae_io import load_sae
    from attnsae.splice import check_sae

    saes = saes if saes is not None else [load_sae(p, device=device) for p in paths]
    for path, sae in zip(paths, saes):
        try:
            check_sae(model, sae)
        except AttnsaeError as e:
            raise AttnsaeError(f"SAE {path}: {e}") from None
    return saes


def sae_names(paths: list[str]) -> list[str]:
    """A short name per SAE path (its folder or file name), made unique with a suffix where needed."""
    names = [Path(p.rstrip("/")).stem or p for p in paths]
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def load_tokens(args: argparse.Namespace, model, n_tokens: int, progress: bool = True):
    """Whole contexts (BOS at 0 unless ``--no-bos``) covering ``n_tokens`` tokens of the corpus flags' split:
    int64 numpy ``[n_contexts, context_size]``."""
    import math

    from attnsae.corpus import load_corpus

    if n_tokens < 1:
        raise AttnsaeError(f"--n-tokens must be positive, got {n_tokens}")
    n_contexts = math.ceil(n_tokens / args.context_size)
    per_context = args.context_size - 1 if args.prepend_bos else args.context_size
    corpus = load_corpus(model.tokenizer, args.source, args.split, args.context_size, args.prepend_bos,
                         args.text_field, max_tokens=n_contexts * per_context, n_ctx=model.cfg.n_ctx,
                         progress=progress)
    return corpus.tokens[:n_contexts]


# ----------------------------------------------------------------------------------------------- commands


def _info_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)


@command("info", "load a model and print its shape and hook names", _info_args)
def cmd_info(args: argparse.Namespace) -> None:
    from attnsae.models import load_model, model_name

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    c = model.cfg
    print(f"model      {model_name(model)}")
    print(f"layers     {c.n_layers}   heads {c.n_heads}   d_head {c.d_head}   d_model {c.d_model}   n_ctx {c.n_ctx}")
    print(f"vocab      {c.d_vocab}   bos id {model.tokenizer.bos_token_id}")
    print(f"SAE input  blocks.{{L}}.attn.hook_z  (d_in = {c.n_heads * c.d_head})")



def _corpus_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_corpus_args(p)
    p.add_argument("--max-tokens", type=int, default=None, help="stop after this many tokens")
    p.add_argument("--save", default=None, help="write the contexts to this .npy file")


@command("corpus", "tokenise a corpus split into contexts and report what it holds", _corpus_args)
def cmd_corpus(args: argparse.Namespace) -> None:
    from attnsae.corpus import load_corpus
    from attnsae.models import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    t0 = time.perf_counter()
    c = load_corpus(model.tokenizer, args.source, args.split, args.context_size, args.prepend_bos, args.text_field,
                    max_tokens=args.max_tokens, n_ctx=model.cfg.n_ctx)
    dt = time.perf_counter() - t0
    print(f"{c.tokens.shape[0]:,} contexts of {c.context_size} = {c.n_tokens:,} tokens from {c.stats.n_docs:,} "
          f"documents ({c.stats.n_bytes:,} bytes, {c.stats.n_skipped} skipped) in {dt:.1f}s "
          f"({c.n_tokens / dt:,.0f} tokens/s)")
    if args.save:
        from attnsae.io_utils import atomic_save_npy

        atomic_save_npy(c.tokens, args.save)
        print(f"saved {args.save}")



# ----------------------------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    _load_command_modules()
    parser = argparse.ArgumentParser(prog="attnsae", description="Sparse autoencoders on attention outputs (hook_z).")
    from attnsae import __version__

    parser.add_argument("--version", action="version", version=f"attnsae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help, add_args, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        add_args(p)
        p.set_defaults(func=fn)
    return parser


def _load_command_modules() -> None:
    """Commands of later pipeline stages register themselves from their own CLI modules."""
    import importlib

    for mod in ("attnsae.cli_train", "attnsae.cli_eval", "attnsae.cli_attribute", "attnsae.cli_dashboard"):  # later stages append their CLI modules here
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        args.func(args)
    except AttnsaeError as e:
        print(f"attnsae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attnsae: interrupted", file=sys.stderr)
        return 130
    return 0


def print_json(obj) -> None:
    print(json.dumps(obj, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
