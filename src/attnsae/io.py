"""Atomic file writes and output folders: a crash, a signal or a bad input never leaves a half-written file behind,
and an output never replaces a folder attnsae did not write or an input of the same command.

* :func:`atomic_path` / :func:`atomic_dir`: write a temporary sibling, rename it into place when complete.
* :func:`check_output_dir`: an ``--out`` folder is new, empty, or one the same command wrote before (its
  :data:`OUTPUT_MARKER` says so, and lists everything in it); never an input, a folder holding one, a mount point or
  a dangling link.
* :func:`dir_lock` / :func:`try_dir_lock`: one process at a time in a cache entry or a training run.
* :func:`json_text`: JSON without ``NaN``/``Infinity`` (which are not JSON): non-finite numbers become ``null``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from attnsae.errors import AttnsaeError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it is renamed onto ``path``, on failure removed."""
    path = Path(path)
    parent = make_dir(path.parent)
    if not os.access(parent, os.W_OK):
        raise AttnsaeError(f"cannot write to {parent}: permission denied; choose a writable location")
    _remove_stale(parent, path.name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=parent)
    except OSError as e:
        raise write_error(path, e) from e
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as e:  # disk full, quota, I/O error: one line, and the temporary file goes
        raise write_error(path, e) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, owner: str | None = None, inputs: Iterable[str | os.PathLike] = ()
               ) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces folder ``path`` whole, on failure it is removed.

    A reader never sees a half-written folder: either the old one (if any) or the complete new one. With ``owner``
    (the command writing it, e.g. ``"dashboard"``), ``path`` must pass :func:`check_output_dir` for that command
    before and again at the swap (the folder may have changed meanwhile), and the new folder gets the marker that
    lets the same command replace it next time. Without ``owner`` the caller vouches that ``path`` is attnsae's.
    """
    path = Path(path)
    if owner is not None:
        path = check_output_dir(path, owner, inputs)
    parent = make_dir(path.parent)
    if path.exists() and not path.is_dir():
        raise AttnsaeError(f"{path} is a file, not a folder; choose a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AttnsaeError(f"cannot write to {parent}: permission denied; choose a writable location")
    _remove_stale(parent, path.name)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=parent))
    except OSError as e:
        raise write_error(path, e) from e
    try:
        yield tmp
        if owner is not None:
            write_marker(tmp, owner, entries=entries(tmp))
            check_output_dir(path, owner, inputs)
        os.chmod(tmp, 0o777 & ~current_umask())
        _swap(tmp, path, parent)
    except OSError as e:  # disk full, quota, I/O error: one line, and the temporary folder goes
        raise write_error(path, e) from e
    except AttnsaeError as e:  # a write inside failed: name the file where the user will look for it
        if str(tmp) not in str(e):
            raise
        raise AttnsaeError(str(e).replace(str(tmp), str(path))) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _swap(new: Path, path: Path, parent: Path) -> None:
    """Rename folder ``new`` onto ``path``; an old folder there is moved aside first (a folder cannot be renamed
    over a non-empty one), put back if the rename fails, and deleted once the new one is in place."""
    if not path.exists():
        os.replace(new, path)
        return
    old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), suffix=".old", dir=parent))
    try:
        os.replace(path, old / "x")
    except BaseException:
        old.rmdir()
        raise
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old / "x", path)  # put the old folder back (if even that fails, it stays in `old`, not deleted)
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- output folders

OUTPUT_MARKER = ".attnsae.json"  # {"written_by": "attnsae dashboard", "entries": [what it wrote], ...}


def write_marker(folder: str | os.PathLike, command: str, **extra: Any) -> None:
    """Mark ``folder`` as the output of ``attnsae {command}`` (so that command may replace it later); ``extra``:
    whatever else that command needs to recognise its output."""
    atomic_write_json({"written_by": f"attnsae {command}", **extra}, Path(folder) / OUTPUT_MARKER)


def entries(folder: str | os.PathLike) -> list[str]:
    """Every file, link and folder under ``folder``, as sorted paths relative to it (the marker excepted)."""
    folder = Path(folder)
    found = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            rel = os.path.relpath(os.path.join(root, name), folder)
            if rel != OUTPUT_MARKER:
                found.append(rel)
    return sorted(found)


def marker(folder: str | os.PathLike) -> dict[str, Any]:
    """The marker of ``folder`` (:func:`write_marker`), or ``{}`` when it has no readable one."""
    try:
        d = json.loads((Path(folder) / OUTPUT_MARKER).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return d if isinstance(d, dict) else {}


def written_by(folder: str | os.PathLike) -> str | None:
    """The command whose output ``folder`` is (``"attnsae dashboard"``), or None when it has no readable marker."""
    by = marker(folder).get("written_by")
    return by if isinstance(by, str) else None


def check_output_dir(path: str | os.PathLike, command: str, inputs: Iterable[str | os.PathLike] = (),
                     flag: str = "--out") -> Path:
    """The output folder ``path`` of ``attnsae {command}``, checked before any work: returns its real path.

    It must be new, empty, or a folder this same command wrote before (its :data:`OUTPUT_MARKER`); never one of
    ``inputs``, nor a folder holding one; not a mount point (it is replaced by a rename) nor a link to nothing.
    Creates nothing.
    """
    if not os.fspath(path):
        raise AttnsaeError(f"{flag} is empty; give a folder")
    given = Path(path)
    if given.exists() and not given.is_dir():
        raise AttnsaeError(f"{flag} {given} is a file, not a folder; choose a folder")
    check_writable_dir(given)
    path = Path(os.path.realpath(given))
    if path.is_dir() and os.path.ismount(path):
        raise AttnsaeError(f"{flag} {given} is a mount point, which cannot be replaced by a new folder; give a folder "
                           f"inside it, e.g. {flag} {given / command.split()[-1]}")
    for inp in inputs:
        if not os.path.lexists(inp):
            continue
        real = Path(os.path.realpath(inp))
        if real == path or path in real.parents:
            held = "is" if real == path else "holds"
            raise AttnsaeError(f"{flag} {given} {held} the input {inp}; an output never replaces an input: choose "
                               f"another {flag}")
    try:
        used = path.is_dir() and any(path.iterdir())
    except OSError as e:
        raise AttnsaeError(f"cannot read {flag} {given}: {e.strerror}; choose a folder you can read") from None
    if used:
        by = written_by(path)
        if by is None:
            raise AttnsaeError(f"{flag} {given} already holds files that attnsae did not write (no {OUTPUT_MARKER}); "
                               f"attnsae replaces only its own earlier output: choose a new or empty folder")
        if by != f"attnsae {command}":
            raise AttnsaeError(f"{flag} {given} holds the output of `{by}`, not of `attnsae {command}`; choose "
                               "another folder")
        listed = marker(path).get("entries")
        added = sorted(set(entries(path)) - set(listed)) if isinstance(listed, list) else []
        if added:
            raise AttnsaeError(f"{flag} {given} is an earlier output of `attnsae {command}`, but {added[0]}"
                               f"{f' and {len(added) - 1} more' if len(added) > 1 else ''} in it is not: move your "
                               f"files out, or choose another {flag}")
    return path


# ----------------------------------------------------------------------------------------------- temporary names


def _temp_prefix(name: str) -> str:
    """``.{name}.attnsae-{host}-{pid}.``: a temporary sibling's prefix, naming the process that made it."""
    return f".{name}.attnsae-{socket.gethostname()}-{os.getpid()}."


TEMPORARY = re.compile(r"^\.(.+)\.attnsae-(.+)-(\d+)\.[^.]+\.(tmp|old)$")  # .{name}.attnsae-{host}-{pid}.XXXX.tmp


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary sibling that :func:`atomic_path` or :func:`atomic_dir` makes."""
    return TEMPORARY.match(name) is not None


def _remove_stale(parent: Path, name: str) -> None:
    """Remove temporary siblings of ``name`` left by a killed attnsae process of this machine (SIGKILL runs no
    cleanup): a killed cache or dashboard would otherwise leave gigabytes in hidden folders."""
    host = socket.gethostname()
    try:
        found = list(os.scandir(parent))
    except OSError:
        return
    for entry in found:
        m = TEMPORARY.match(entry.name)
        if not m or m.group(1) != name or m.group(2) != host or _alive(int(m.group(3))):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists
        return True
    return True


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


@contextlib.contextmanager
def try_dir_lock(path: str | os.PathLike, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on existing folder ``path`` while the block runs, or raise ``AttnsaeError(busy)`` at
    once when another process holds it (a training run refuses a second run into its folder). Advisory (flock)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AttnsaeError(busy) from None
        yield
    finally:
        os.close(fd)


NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def disk_full(path: str | os.PathLike, e: OSError) -> bool:
    """Whether the failed write ``e`` of ``path`` ran out of space: the error says so (ENOSPC, EDQUOT, EFBIG), or it
    does not say (numpy's short write has no errno) and the file system has less than 1 MiB left."""
    if e.errno in NO_SPACE:
        return True
    if e.errno is not None:
        return False
    folder = Path(path).absolute()
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free < 2**20
    except OSError:
        return False


def write_error(path: str | os.PathLike, e: OSError) -> AttnsaeError:
    """The one-line error for a failed write of ``path`` (``e``: the OSError); the disk is blamed only when it is
    full (:func:`disk_full`)."""
    if disk_full(path, e):
        return AttnsaeError(f"could not write {path}: {e.strerror or e}; is the disk full? free some space or choose "
                            "another location")
    return AttnsaeError(f"could not write {path}: {e.strerror or e}; choose another location")


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Check that folder ``path`` exists and is writable, or could be created; one clear error otherwise.

    Creates nothing, so a run that fails its later checks leaves no trace.
    """
    if not os.fspath(path):
        raise AttnsaeError("the output path is empty; give a folder")
    path = Path(path).absolute()
    if os.path.islink(path) and not path.exists():
        raise AttnsaeError(f"{path} is a symbolic link to {os.readlink(path)}, which does not exist; give an existing "
                           "folder or a new path")
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


def current_umask() -> int:
    """The process's umask (read without changing it for longer than the call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | os.PathLike, max_bytes: int) -> Any:
    """The JSON in file ``path``, which is read at most ``max_bytes`` (+ 1) far: a bigger file (a wrong path, a
    device) raises ValueError; a missing or corrupt one OSError, UnicodeDecodeError, ValueError or RecursionError."""
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"larger than {max_bytes >> 20} MiB, so it is no file attnsae wrote")
    return json.loads(data.decode("utf-8"))


def printable(text: str | os.PathLike) -> str:
    """``text`` (a path) as valid Unicode: bytes of a non-UTF-8 file name (held as surrogate escapes, which no JSON,
    HTML or plot can encode) become U+FFFD."""
    text = os.fspath(text)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def finite(obj: Any) -> Any:
    """``obj`` (nested dicts, lists, tuples) with every non-finite float replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def json_text(obj: Any, indent: int | None = None, ensure_ascii: bool = True) -> str:
    """Valid JSON for ``obj``: NaN and infinities (which JSON lacks) become null; other objects their ``str``."""
    return json.dumps(finite(obj), indent=indent, default=str, allow_nan=False, ensure_ascii=ensure_ascii)


def atomic_write_json(obj, path: str | os.PathLike) -> None:
    atomic_write_text(json_text(obj, indent=1), path)


def atomic_save_npy(arr: np.ndarray, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)
