"""The flags commands share, their argparse types (each a one-line error naming the flag), the training settings as
flags (one per :class:`~attnsae.training.config.TrainConfig` field, its help line the field's), and the parser
class whose usage errors are one ``attnsae: error:`` line."""

from __future__ import annotations

import argparse
import typing
from dataclasses import fields

from attnsae.errors import short


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``attnsae: error:`` line (exit 2) like every other user error."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"attnsae: error: {self.prog.removeprefix('attnsae').strip() or 'usage'}: {message}; see "
                     f"`{self.prog} --help`\n")


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def seed(text: str) -> int:
    """argparse type: a seed in 0..2**63 - 1 (what torch and numpy both take)."""
    from attnsae.training.config import SEED_MAX  # torch-free

    value = _int_at_least(text, 0)
    if value > SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be at most {SEED_MAX} (2**63 - 1), got {short(value)}")
    return value


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{short(text)} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {'positive' if low == 1 else f'>= {low}'}, got {value}")
    return value


def context_size(text: str) -> int:
    """argparse type: a context length >= 2 (BOS and one token)."""
    return _int_at_least(text, 2)


def add_model_args(p: argparse.ArgumentParser, sae_default: bool = False) -> None:
    p.add_argument("--model", default=None,
                   help="model: default the model the SAEs name (the reference model, a name `attnsae models` "
                   "lists, a local folder, or a hub name, which needs network the first time)"
                   if sae_default else "model: omit for the shipped reference model, or a name `attnsae models` lists "
                   "(fetched on first use), a .gguf file, a local HF-format directory, or a hub name")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or mps")


def add_corpus_args(p: argparse.ArgumentParser, split: str = "train", n_tokens: int | None = None,
                    of_saes: bool = False) -> None:
    p.add_argument("--source", default=None if of_saes else "stdlib",
                   help="'stdlib', 'english', a local .txt/.jsonl/.parquet file or folder, or a Hugging Face dataset "
                   "name" + (" (default: the SAEs' training corpus when it is stdlib or english, else stdlib)"
                             if of_saes else ""))
    p.add_argument("--split", default=split, choices=["train", "validation"])
    p.add_argument("--text-field", default="text", help="text column for .jsonl / .parquet / HF datasets")
    p.add_argument("--context-size", type=context_size, default=128)
    p.add_argument("--no-bos", dest="prepend_bos", action="store_false", help="do not force BOS at position 0")
    if n_tokens is not None:
        p.add_argument("--n-tokens", type=positive, default=n_tokens, help="tokens (whole contexts, BOS included)")


def corpus_of(args: argparse.Namespace) -> dict:
    """The corpus flags of ``add_corpus_args`` as keyword arguments of :func:`attnsae.jobs.inputs.load_tokens`."""
    return {k: getattr(args, k) for k in ("source", "split", "context_size", "prepend_bos", "text_field")}


def add_progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def train_args(p: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """One flag per :class:`~attnsae.training.config.TrainConfig` setting (``only``: those), its help line and
    choices from the field's metadata, plus ``--config FILE`` (flags win)."""
    from attnsae.training.config import TrainConfig, defaults

    command = p.prog.split()[-1]
    p.usage = f"attnsae {command} [--config FILE] [--SETTING VALUE ...]{' --cache-out DIR' * (command == 'cache')} [-h]"
    p.add_argument("--config", default=None, metavar="FILE", help="YAML or JSON file of settings (flags override it)")
    hints, default = typing.get_type_hints(TrainConfig), defaults()
    for f in fields(TrainConfig):
        if only is not None and f.name not in only:
            continue
        flag, hint, choices = "--" + f.name.replace("_", "-"), hints[f.name], f.metadata["rule"].get("choices")
        shown = " ".join(map(str, default[f.name])) if isinstance(default[f.name], list) else default[f.name]
        help = f.metadata["help"] if "(default:" in f.metadata["help"] else f"{f.metadata['help']} (default: {shown})"
        metavar = "N" if "int" in str(hint) else "X" if "float" in str(hint) else None
        kw: dict = {"default": argparse.SUPPRESS, "dest": f.name, "choices": choices, "help": help}
        if metavar and not choices:
            kw["metavar"] = metavar
        if hint is bool:
            kw.pop("metavar", None)
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif "list[" in str(hint):
            p.add_argument(flag, nargs="+", **kw)  # TrainConfig coerces and checks the values
        else:
            p.add_argument(flag, **kw)


def train_config(args: argparse.Namespace, skip: tuple[str, ...] = ()):
    """The validated :class:`~attnsae.training.config.TrainConfig` of ``--config`` and the flags given."""
    from attnsae.training.config import TrainConfig, read_config_file

    d = read_config_file(args.config) if args.config else {}
    plumbing = ("config", "func", "command", "debug", "parser_of", *skip)  # argparse's, not settings
    d.update({k: v for k, v in vars(args).items() if k not in plumbing})
    return TrainConfig.from_dict(d)


def _port(text: str) -> int:
    value = _int_at_least(text, 0)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0..65535, got {value}")
    return value


