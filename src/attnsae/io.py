"""Atomic file writes: a crash or a bad input never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from attnsae.errors import AttnsaeError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it is renamed onto ``path``, on failure removed."""
    path = Path(path)
    parent = make_dir(path.parent)
    if not os.access(parent, os.W_OK):
        raise AttnsaeError(f"cannot write to {parent}: permission denied; choose a writable location")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise write_error(path, e) from e
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as e:  # disk full, quota, I/O error: one line, and the temporary file goes
        raise write_error(path, e) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces folder ``path`` whole, on failure it is removed.

    A reader never sees a half-written folder: either the old one (if any) or the complete new one.
    """
    path = Path(path)
    parent = make_dir(path.parent)
    if path.exists() and not path.is_dir():
        raise AttnsaeError(f"{path} is a file, not a folder; choose a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AttnsaeError(f"cannot write to {parent}: permission denied; choose a writable location")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    except OSError as e:
        raise write_error(path, e) from e
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if path.exists():  # a folder cannot be renamed over a non-empty one: move the old one aside, then swap
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=parent))
            os.replace(path, old / "x")
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:  # put the old folder back
                os.replace(old / "x", path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:  # disk full, quota, I/O error: one line, and the temporary folder goes
        raise write_error(path, e) from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def dir_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on folder ``path`` (its nearest existing ancestor when it does not exist yet) while the
    block runs, so that two processes filling the same cache entry take turns instead of racing. Advisory (flock);
    creates nothing, so a failed block leaves no trace. Not reentrant: do not nest two locks on one folder."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    folder = Path(path).absolute()
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def write_error(path: str | os.PathLike, e: OSError) -> AttnsaeError:
    """The one-line error for a failed write of ``path`` (``e``: the OSError, e.g. ENOSPC when the disk is full)."""
    return AttnsaeError(f"could not write {path}: {e.strerror or e}; is the disk full? free some space or choose "
                        "another location")


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Check that folder ``path`` exists and is writable, or could be created; one clear error otherwise.

    Creates nothing, so a run that fails its later checks leaves no trace.
    """
    path = Path(path).absolute()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise AttnsaeError(f"cannot create output folder {path}: {probe} is not a folder; choose another location")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise AttnsaeError(f"cannot write to output folder {path}: permission denied on {probe}; choose a writable "
                           "location")
    return path


def make_dir(path: str | os.PathLike) -> Path:
    """``mkdir -p`` with one clear error."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AttnsaeError(f"cannot create output folder {path}: {e.strerror}; choose a writable location") from None
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(obj, path: str | os.PathLike) -> None:
    atomic_write_text(json.dumps(obj, indent=1, default=str), path)


def atomic_save_npy(arr: np.ndarray, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)
