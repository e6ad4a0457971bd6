"""``attnsae ARGS`` for the tests, in a fresh process that skips the 4-5 s of imports (torch, transformer-lens).

A *zygote* (one per test session) imports what every command needs once and then forks one child per call. The child
is a new process like ``python -m attnsae ARGS``: its own folder, environment, stdin (/dev/null), stdout and stderr
(files, read back as text) and exit status, and nothing it does reaches the next call. It runs the package's
``__main__`` (the same entry point). Nothing is computed before the fork, so no thread pool is inherited.

``ATTNSAE_TEST_FORK=0`` runs every call as a plain subprocess instead (the CLI tests must pass both ways).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ZYGOTE = r"""
import json, os, runpy, signal, sys
import torch, transformer_lens, transformers  # the slow imports, done once
import attnsae.cli
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
requests = os.fdopen(0, "r")
for line in requests:
    req = json.loads(line)
    pid = os.fork()
    if pid:
        print(pid, flush=True)
        continue
    rc = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if req["cwd"]:
            os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # read by torch at import, before the fork: apply it
            torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        sys.argv = ["attnsae", *req["args"]]
        try:
            runpy.run_module("attnsae", run_name="__main__", alter_sys=True)
            rc = 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        try:
            import atexit
            atexit._run_exitfuncs()  # what interpreter shutdown would run
            sys.stdout.flush()
            sys.stderr.flush()
            with open(req["rc"] + ".tmp", "w") as f:
                f.write(str(rc))
            os.replace(req["rc"] + ".tmp", req["rc"])
        finally:
            os._exit(rc)
"""


class Zygote:
    """The pre-warmed parent: ``run`` sends it one call and waits for the child's exit status file."""

    def __init__(self, env: dict[str, str]):
        self.tmp = Path(tempfile.mkdtemp(prefix="attnsae-zygote-"))
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self.lock = threading.Lock()
        self.n = 0

    def run(self, args: list[str], env: dict[str, str], cwd, timeout: float) -> subprocess.CompletedProcess:
        with self.lock:
            self.n += 1
            base = self.tmp / str(self.n)
            req = {"args": list(args), "env": env, "cwd": None if cwd is None else str(cwd),
                   "stdout": f"{base}.out", "stderr": f"{base}.err", "rc": f"{base}.rc"}
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the CLI zygote died; rerun with ATTNSAE_TEST_FORK=0 to see why")
            pid = int(line)
        rc_path, deadline, delay = Path(req["rc"]), time.monotonic() + timeout, 0.005
        while not rc_path.exists():
            if not _alive(pid):  # killed by a signal before it could write its status
                if rc_path.exists():
                    break
                rc = -9
                return self._result(args, rc, base)
            if time.monotonic() > deadline:
                _kill_group(pid)
                raise subprocess.TimeoutExpired([sys.executable, "-m", "attnsae", *args], timeout)
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        return self._result(args, int(rc_path.read_text()), base)

    @staticmethod
    def _result(args, rc: int, base: Path) -> subprocess.CompletedProcess:
        read = lambda p: p.read_text(errors="replace") if p.exists() else ""  # noqa: E731
        return subprocess.CompletedProcess([sys.executable, "-m", "attnsae", *args], rc,
                                           read(Path(f"{base}.out")), read(Path(f"{base}.err")))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # the child and anything it started
    except ProcessLookupError:
        pass


_zygote: Zygote | None = None
_zygote_lock = threading.Lock()


def run_attnsae(args: list[str], base_env: dict[str, str], extra_env: dict[str, str] | None = None, cwd=None,
                timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m attnsae ARGS`` with environment ``base_env`` plus ``extra_env`` in folder ``cwd``: a forked child
    of the zygote (started with ``base_env``, the same for every call, since some libraries read their environment
    at import), or a plain subprocess when ``ATTNSAE_TEST_FORK=0`` or where fork does not exist."""
    global _zygote
    env = {**base_env, **(extra_env or {})}
    if os.environ.get("ATTNSAE_TEST_FORK", "1") == "0" or not hasattr(os, "fork"):
        return subprocess.run([sys.executable, "-m", "attnsae", *args], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=cwd)
    with _zygote_lock:
        if _zygote is None or _zygote.proc.poll() is not None:
            _zygote = Zygote(base_env)
    return _zygote.run(args, env, cwd, timeout)
