"""The ``attnsae`` command. Thin: parse, validate once, call one job (:mod:`attnsae.jobs`) with plain arguments,
print its result.

:data:`~attnsae.cli.commands.COMMANDS` is the table of subcommands: name -> (help, flags, run); their shared flags
are :mod:`attnsae.cli.flags`. A user error is an :class:`AttnsaeError`, printed as one line ``attnsae: error: ...``
with exit status 2; anything else is a bug, printed as one line that says so (exit 3) — ``--debug`` shows its
traceback.
"""

from __future__ import annotations

import argparse
import sys

from attnsae.cli.commands import COMMANDS
from attnsae.cli.flags import _Parser, train_config
from attnsae.errors import AttnsaeError, Stopped, stop_on_signals
from attnsae.io import disk_full, write_error

__all__ = ["COMMANDS", "build_parser", "main", "train_config"]


def build_parser() -> argparse.ArgumentParser:
    from attnsae import __version__

    parser = _Parser(prog="attnsae", description="Sparse autoencoders on attention outputs (hook_z).")
    parser.add_argument("--version", action="version", version=f"attnsae {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    parser.set_defaults(parser_of={})  # command -> its parser, so that a flag it lacks is reported by it
    for name, (help, add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        parser.get_default("parser_of")[name] = p
        add_args(p)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of an unexpected error")
        p.set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # a flag the command does not take: say so with the command's own --help
        args.parser_of.get(getattr(args, "command", None), parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        with stop_on_signals():
            args.func(args)
    except AttnsaeError as e:
        say(f"attnsae: error: {one_line(str(e))}")
        return 2
    except KeyboardInterrupt as e:  # Ctrl+C or SIGTERM (Stopped), after every cleanup on the way out has run
        stopped = e if isinstance(e, Stopped) else Stopped()
        detail = f"; {stopped.detail}" if stopped.detail else ""
        say(f"attnsae: stopped by {stopped.name}{detail}")
        return 128 + stopped.signum
    except OSError as e:  # a full disk is not a bug: the writes that know their file say which one
        if not disk_full(e.filename or ".", e) or args.debug:
            return _internal_error(args, e)
        say(f"attnsae: error: {one_line(str(write_error(e.filename or 'a file', e)))}")
        return 2
    except Exception as e:  # a bug: say so in one line, traceback on request
        return _internal_error(args, e)
    return 0


def _internal_error(args: argparse.Namespace, e: Exception) -> int:
    if args.debug:
        raise e
    text = " ".join(str(e).split())[:300]
    say(f"attnsae: error: internal error (a bug in attnsae): {type(e).__name__}: {text}; rerun with "
        f"`attnsae --debug {args.command} ...` for the traceback and report it")
    return 3


def say(line: str) -> None:
    """One line on stderr in one write: the processes of a distributed run share the terminal, and print's separate
    newline lets their lines run together."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def one_line(text: str, limit: int = 1000) -> str:
    """``text`` on one line, at most ``limit`` characters: a long middle (a quoted value) is elided, so the end of the
    message, which says what to do, stays."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    keep = (limit - 5) // 2
    return f"{text[:keep]} ... {text[-keep:]}"

