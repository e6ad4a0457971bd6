"""A training run's folder: one run at a time, nothing of anyone else's touched, and ``--overwrite`` that keeps the
previous run until the new one has its first checkpoint.

    OUT/run_config.json  checkpoint.pt  metrics.jsonl      the run (RUN_FILES)
    OUT/{spec.name}/                                       its SAEs, SAELens folders, written when it ends
    OUT/.attnsae-previous-run/                             the previous run, set aside by --overwrite

Rules (each refusal is one line, before the model loads where it can be):

* a fresh run needs a folder with no run in it and none of the SAE folders it will write (other files may stay);
* ``--resume`` continues the run there; ``--overwrite`` replaces it, but only moves it aside: the previous run is
  deleted once the new run's first checkpoint is on disk, and put back if the new run fails before that. A kill
  (SIGKILL) in between is settled the next time ``train`` opens the folder, the same way;
* a second ``train`` into a folder whose run is still going is refused (an advisory lock on the folder);
* when a run fails, what is left is stated from the disk (:meth:`RunFolder.settle`), never assumed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

from attnsae.errors import AttnsaeError
from attnsae.io import make_dir, try_dir_lock

RUN_FILES = ("run_config.json", "checkpoint.pt", "metrics.jsonl", "checkpoint")  # checkpoint/: its shards
SAE_FILES = ("cfg.json", "sae_weights.safetensors", "feature_frequency.json")  # what a run writes in an SAE folder
ASIDE = ".attnsae-previous-run"


class RunFolder:
    """Process 0's handle on a run's folder ``out`` for one ``train`` call (other processes of the run get one with
    ``owner=False``, which only reads)."""

    def __init__(self, out: Path, resume: bool = False, overwrite: bool = False, owner: bool = True) -> None:
        self.out, self.resume, self.overwrite, self.owner = Path(out), resume, overwrite, owner
        self.created = False  # whether this call made the folder (so a failed run removes it)
        self.fresh = False  # whether this call starts a run from step 0 (no checkpoint there, or --overwrite)
        self.set_aside: list[str] = []  # entries of the previous run moved into ASIDE by this call
        self.step_on_disk: int | None = None  # step of this run's checkpoint on disk (resumed or written)

    @property
    def aside(self) -> Path:
        return self.out / ASIDE

    def existing_run(self) -> list[str]:
        return [f for f in RUN_FILES if (self.out / f).exists()]

    def view(self) -> list[tuple[str, int]]:
        """What this process sees of the run: each run file there and its size (the same on every process of a run
        whose folder all of them share)."""
        return [(f, (self.out / f).stat().st_size) for f in RUN_FILES if (self.out / f).is_file()]

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Create the folder if needed and hold its lock while the run goes on; a second run is refused at once."""
        if not self.owner:
            yield
            return
        self.created = not self.out.exists()
        make_dir(self.out)
        try:
            with try_dir_lock(self.out, f"another `attnsae train` is running in {self.out}; wait for it to end, or "
                                        "choose another --out"):
                self._recover()
                yield
        finally:
            if self.created and self.out.is_dir() and not any(self.out.iterdir()):
                self.out.rmdir()

    def check(self, inputs: list[str] = ()) -> None:
        """Refuse a fresh run into a folder holding a run, and a folder that is, or lies inside, one of ``inputs``
        (an activation cache); before the model loads."""
        for inp in inputs:
            real = Path(os.path.realpath(inp))
            here = Path(os.path.realpath(self.out))
            if here == real or real in here.parents:
                raise AttnsaeError(f"--out {self.out} is inside the input {inp}; a run never writes into what it "
                                   "reads: choose another --out")
        existing = self.existing_run()
        if existing and not (self.resume or self.overwrite):
            raise AttnsaeError(f"{self.out} already holds a training run ({existing[0]}); pass --resume to continue it "
                               "or --overwrite to start over")
        self.fresh = self.overwrite or not (self.out / "checkpoint.pt").exists()  # fit() starts it from step 0
        if self.overwrite and existing:
            self._check_replaceable(self._previous_saes())

    def claim(self, names: list[str]) -> None:
        """Refuse a run whose SAE folders ``names`` would replace something that is not this folder's run."""
        if not self.owner:
            return
        if self.existing_run():  # resume: the SAE folders there are the run's own; overwrite sets them aside
            if self.overwrite:
                self._check_replaceable(names)
            return
        taken = [n for n in names if os.path.lexists(self.out / n)]
        if taken:
            raise AttnsaeError(f"{self.out / taken[0]} already exists and is not part of a training run in {self.out}; "
                               "move it away or choose another --out")

    def set_previous_aside(self, names: list[str]) -> None:
        """``--overwrite``: move the previous run (its files, its SAE folders and any of ``names``) into ASIDE."""
        if not (self.owner and self.overwrite and self.existing_run()):
            return
        entries = [*RUN_FILES, *self._previous_saes(), *names]
        make_dir(self.aside)
        for name in dict.fromkeys(entries):
            if os.path.lexists(self.out / name):
                os.replace(self.out / name, self.aside / name)
                self.set_aside.append(name)

    def checkpointed(self, step: int) -> None:
        """This run's checkpoint at ``step`` is on disk: the previous run, if set aside, is no longer needed."""
        self.step_on_disk = step
        if self.owner and self.aside.exists():
            shutil.rmtree(self.aside)

    def settle(self) -> str:
        """After a failure: keep this run's checkpoint, or put the previous run back, or remove what this run wrote;
        returns what is left, as a clause for the error line (read from the disk, not assumed)."""
        if not self.owner:
            return ""
        if self.step_on_disk is not None and (self.out / "checkpoint.pt").exists():
            return (f"the checkpoint at step {self.step_on_disk} in {self.out} is kept; rerun the same command with "
                    "--resume to continue from it")
        if self.aside.exists():
            self._restore()
            return f"the previous run in {self.out} is back as it was"
        if not self.fresh:  # --resume that failed before it read the checkpoint: nothing of the run was changed
            return f"the run in {self.out} is as it was"
        for f in ("run_config.json", "metrics.jsonl"):  # written by this new run before its first checkpoint
            (self.out / f).unlink(missing_ok=True)
        shutil.rmtree(self.out / "checkpoint", ignore_errors=True)  # shards of a first checkpoint cut short
        return "no run was kept" if self.created else f"{self.out} is as it was"

    # ------------------------------------------------------------------------------------------------ internals

    def _previous_saes(self) -> list[str]:
        """The SAE folder names the previous run's ``run_config.json`` lists (none when it is unreadable)."""
        try:
            names = json.loads((self.out / "run_config.json").read_text()).get("saes", [])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            return []
        return [n for n in names if isinstance(n, str) and n and Path(n).name == n and not n.startswith(".")]

    def _check_replaceable(self, names: list[str]) -> None:
        """Refuse to set aside (and so, later, delete) an SAE folder holding anything a run did not write there."""
        for name in names:
            folder = self.out / name
            if not os.path.lexists(folder):
                continue
            extra = sorted(set(os.listdir(folder)) - set(SAE_FILES)) if folder.is_dir() else [""]
            if extra:
                what = folder / extra[0] if extra[0] else folder
                raise AttnsaeError(f"{what} is not part of the training run that --overwrite replaces (a run writes "
                                   f"only {', '.join(SAE_FILES)} there); move it away first")

    def _restore(self) -> None:
        """Put the run set aside back in place of the new run's files (which never reached a checkpoint)."""
        for name in os.listdir(self.aside):
            target = self.out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif os.path.lexists(target):
                target.unlink()
            os.replace(self.aside / name, target)
        self.aside.rmdir()

    def _recover(self) -> None:
        """Settle an ``--overwrite`` that a kill interrupted: the new run reached a checkpoint (delete the previous
        run) or it did not (put the previous run back)."""
        if not self.aside.exists():
            return
        if (self.out / "checkpoint.pt").exists():
            shutil.rmtree(self.aside)
        else:
            self._restore()
            print(f"attnsae: note: an earlier --overwrite in {self.out} was stopped before its first checkpoint; the "
                  "previous run is back in place", file=sys.stderr)
