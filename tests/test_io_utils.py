"""Atomic folders: a reader sees the old folder or the complete new one, never a mix, and a failure leaves no trace.
Cache locks: two processes filling one cache entry take turns."""

import os
import subprocess
import sys
import textwrap
import time

import pytest

from attnsae.errors import AttnsaeError
from attnsae.io import atomic_dir, dir_lock


def test_atomic_dir_replaces_an_existing_folder_whole(tmp_path):
    out = tmp_path / "site"
    with atomic_dir(out) as d:
        (d / "a.txt").write_text("first")
        (d / "only-in-first.txt").write_text("x")
        assert not out.exists()  # nothing visible until the block succeeds
    with atomic_dir(out) as d:
        (d / "a.txt").write_text("second")
        assert (out / "a.txt").read_text() == "first"  # the old folder stays readable meanwhile
    assert sorted(os.listdir(out)) == ["a.txt"] and (out / "a.txt").read_text() == "second"
    assert os.listdir(tmp_path) == ["site"]  # no temporary or old folders left


def test_atomic_dir_failure_keeps_the_old_folder_and_cleans_up(tmp_path):
    out = tmp_path / "site"
    out.mkdir()
    (out / "old.txt").write_text("keep")
    with pytest.raises(ValueError):
        with atomic_dir(out) as d:
            (d / "half.txt").write_text("half")
            raise ValueError("midway")
    assert os.listdir(out) == ["old.txt"] and os.listdir(tmp_path) == ["site"]


def test_atomic_dir_refuses_a_file_in_its_place(tmp_path):
    (tmp_path / "site").write_text("a file")
    with pytest.raises(AttnsaeError, match="is a file, not a folder"):
        with atomic_dir(tmp_path / "site"):
            pass
    assert (tmp_path / "site").read_text() == "a file"


@pytest.mark.integration
def test_dir_lock_makes_a_second_process_wait_and_creates_nothing(tmp_path):
    """Another process holds the lock on a cache folder that does not exist yet (so the lock is on its nearest
    existing ancestor); this process gets the lock only after the other has finished its block."""
    target = tmp_path / "home" / "models"
    log = tmp_path / "log.txt"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from attnsae.io import dir_lock
        with dir_lock({str(target)!r}):
            open({str(log)!r}, "a").write("start\\n")
            time.sleep(1.0)
            open({str(log)!r}, "a").write("end\\n")
        """)])
    while not log.exists() and holder.poll() is None:  # wait until the other process is inside its block
        time.sleep(0.02)
    with dir_lock(target):
        assert log.read_text() == "start\nend\n"  # not "start" alone: the block ran to its end first
    assert holder.wait(timeout=60) == 0
    assert os.listdir(tmp_path) == ["log.txt"]  # no lock file, no folder
