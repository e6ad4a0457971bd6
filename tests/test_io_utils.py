"""Atomic folders: a reader sees the old folder or the complete new one, never a mix, and a failure leaves no trace."""

import os

import pytest

from attnsae.errors import AttnsaeError
from attnsae.io import atomic_dir


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
