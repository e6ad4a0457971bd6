"""How a command ends when it cannot finish: a user error, or a signal asking it to stop.

* :class:`AttnsaeError`: what is wrong and what to do; the CLI prints it as one line and exits 2 (a bad value is
  quoted with :func:`short`).
* :class:`Stopped`: SIGINT (Ctrl+C) or SIGTERM (``kill``, ``timeout``, Slurm, ``docker stop``) while a command runs,
  raised as an exception so that every cleanup on the way out runs (temporary files removed, a training run's
  state settled); ``detail`` says what was kept and how to continue. The CLI prints one line and exits 128 + signal.
"""

from __future__ import annotations

import contextlib
import reprlib
import signal
from typing import Any, Iterator


class AttnsaeError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 2, 4, 4, 4, 4
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 60, 40


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` for an error line, cut to about ``limit`` characters: a bad value may be megabytes (a string
    pasted by mistake, a corrupt file) or a structure whose full repr never ends (YAML aliases), and a message quotes
    only its start."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value):,} characters)"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"<an integer of {value.bit_length()} bits>"
    text = _REPR.repr(value)
    return text if len(text) <= limit + 20 else text[:limit] + "..."


class Stopped(KeyboardInterrupt):
    """A signal stopped the command. ``detail``: what was kept and how to continue (filled in by the job that knows,
    e.g. the trainer: "the checkpoint at step 200 in OUT is kept; rerun the same command with --resume")."""

    def __init__(self, signum: int = signal.SIGINT, detail: str = "") -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.detail = signum, detail

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _ignore(signum, frame) -> None:
    """A signal that arrives while a stop is cleaning up: the first signal's stop goes on."""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise :class:`Stopped` (once: repeated signals are ignored while the
    cleanup runs); the previous handlers come back afterwards. A no-op outside the main thread."""
    def stop(signum, frame):
        for s in (signal.SIGINT, signal.SIGTERM):  # a Python no-op, not SIG_IGN: a signal already pending would
            signal.signal(s, _ignore)              # otherwise raise "ignored due to race condition" mid-cleanup
        raise Stopped(signum)

    try:
        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
