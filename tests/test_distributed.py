"""Training on several processes (torch.distributed, gloo on CPU): the same SAEs as one process, and a killed rank.

* tests/dist_worker.py trains the runs of tests/dist_runs.py (relu with resampling, topk with AuxK, jumprelu; four
  layers) on 4 processes laid out three ways (data parallel over 4, 2 module groups of 2 replicas, 4 module groups);
  each must give the SAEs one process gives with the same global batch.
* On the reference model under torchrun: data-parallel harvest and training, one rank killed with SIGKILL, every
  surviving rank ends with one line, and --resume ends with the SAEs of one uninterrupted process.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from attnsae.training import distributed
from attnsae.training.trainer import fit
from conftest import run_cli, step_hook, wait_until_stopped
from dist_runs import RUNS, LayerSource

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent


def torchrun(n: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", *args]


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=path, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def assert_same_saes(a: Path, b: Path, names: list[str], atol: float) -> None:
    for n in names:
        wa, wb = load_file(a / n / "sae_weights.safetensors"), load_file(b / n / "sae_weights.safetensors")
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.allclose(wa[k], wb[k], atol=atol, rtol=0), (n, k, (wa[k] - wb[k]).abs().max().item())


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(torchrun(4, str(HERE / "dist_worker.py"), str(out)), env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("modules", [1, 2, 4], ids=["data-parallel", "both", "module-parallel"])
@pytest.mark.parametrize("run", list(RUNS))
def test_several_processes_train_the_saes_of_one(four_ranks, tmp_path, modules, run):
    cfg = RUNS[run]
    specs = cfg.specs(LayerSource.D_IN)
    torch.set_num_threads(1)
    fit(cfg, specs, LayerSource(cfg.layers, cfg.batch_size), tmp_path)
    many = four_ranks / f"m{modules}-{run}"
    assert_same_saes(tmp_path, many, [s.name for s in specs], atol=1e-5)
    one_ck = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    many_ck = torch.load(many / "checkpoint.pt", weights_only=False)
    assert one_ck["state"]["resamples"] == many_ck["state"]["resamples"]
    assert one_ck["shards"] == many_ck["shards"]  # the same files, whichever process wrote them
    for rel in one_ck["shards"].values():  # all-reduced firing counts: exactly the same
        fa = torch.load(tmp_path / rel, weights_only=False)["firing"]
        fb = torch.load(many / rel, weights_only=False)["firing"]
        assert all(torch.equal(fa[k], fb[k]) for k in fa)
    assert sorted(p.name for p in (many / "checkpoint").iterdir()) == sorted(
        rel.split("/")[1] for rel in one_ck["shards"].values())  # earlier steps' shards are gone
    if run == "relu":
        assert sum(r["resampled"] for r in one_ck["state"]["resamples"]) > 0  # resampling took part
    one = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rec = [json.loads(l) for l in (many / "metrics.jsonl").read_text().splitlines()]
    assert [(r["sae"], r["step"]) for r in one] == [(r["sae"], r["step"]) for r in rec]
    for a, b in zip(one, rec):
        assert b["l0"] == pytest.approx(a["l0"], abs=1e-4) and b["mse"] == pytest.approx(a["mse"], rel=1e-4)


@pytest.mark.parametrize("modules", [1, 2, 4], ids=["data-parallel", "both", "module-parallel"])
def test_one_process_resumes_a_run_of_four(four_ranks, tmp_path, modules):
    """A checkpoint holds every SAE and the batches do not depend on the layout: another world size resumes it."""
    cfg = RUNS["topk"]
    specs = cfg.specs(LayerSource.D_IN)
    torch.set_num_threads(1)
    fit(cfg, specs, LayerSource(cfg.layers, cfg.batch_size), tmp_path / "one")
    stopped = four_ranks / f"m{modules}-stopped"
    assert torch.load(stopped / "checkpoint.pt", weights_only=False)["state"]["step"] == 10
    shutil.copytree(stopped, tmp_path / "resumed")
    fit(replace(cfg, resume=True), specs, LayerSource(cfg.layers, cfg.batch_size), tmp_path / "resumed")
    assert_same_saes(tmp_path / "one", tmp_path / "resumed", [s.name for s in specs], atol=1e-5)


def test_the_layout_is_checked():
    comm = distributed.Comm(rank=3, world=4, modules=2)
    assert (comm.module, comm.data_rank, comm.data_world) == (1, 1, 2)
    assert comm.own_layers([5, 1, 3, 2, 0]) == [3, 5] and comm.rows(64) == slice(32, 64)
    with pytest.raises(distributed.AttnsaeError, match="more than the run's 1 layers"):
        comm.own_layers([0])
    with pytest.raises(distributed.AttnsaeError, match="batch_size 31 does not split over 2"):
        distributed.check_batch(comm, 31)
    with pytest.raises(distributed.AttnsaeError, match="needs 2 or a multiple of 2 processes"):
        distributed.init(2)


REF_ARGS = ["train", "--layers", "0", "1", "--architecture", "topk", "--ks", "8", "--d-sae", "256", "--batch-size",
            "256", "--total-tokens", str(256 * 40), "--context-size", "32", "--buffer-size", "2048",
            "--max-corpus-tokens", "40000", "--model-batch-size", "8", "--ckpt-every", "5", "--log-every", "5",
            "--dead-window", "5", "--threads", "1", "--no-progress"]


def _worker_pids(launcher: int) -> dict[int, int]:
    """The launcher's worker processes by rank."""
    out = {}
    for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        try:
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        rank = [e for e in env if e.startswith(b"RANK=")]
        if rank:
            out[int(rank[0][5:])] = int(child)
    return out


def _one_line_each(err: str, n: int) -> list[str]:
    """The error lines of a failed torchrun: one per rank, no traceback of attnsae's code."""
    lines = [line for line in err.splitlines() if line.startswith("attnsae: error:")]
    assert len(lines) == n, err[-3000:]
    assert "attnsae/" not in err, err[-3000:]
    return lines


def test_torchrun_on_the_reference_model_survives_a_killed_rank(tmp_path):
    """Rank 1 stops itself right after the checkpoint of step 15 and is killed there: rank 0 ends with one line, and
    --resume (two processes) ends with the SAEs of one uninterrupted process."""
    one = run_cli(*REF_ARGS, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    out = tmp_path / "two"
    cmd = torchrun(2, "-m", "attnsae", *REF_ARGS, "--out", str(out))
    proc = subprocess.Popen(cmd, env=step_hook("stop", 15, rank=1, env=_env()), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while 1 not in _worker_pids(proc.pid) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    wait_until_stopped(_worker_pids(proc.pid)[1], proc)  # rank 1 stopped itself right after step 15's checkpoint
    os.kill(_worker_pids(proc.pid)[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    (line,) = _one_line_each(err, 1)
    assert "rank 0 of 2" in line and "--resume" in line
    assert torch.load(out / "checkpoint.pt", weights_only=False)["state"]["step"] == 15
    res = subprocess.run(cmd + ["--resume"], env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "one").iterdir() if p.is_dir() and p.name != "checkpoint")
    assert len(names) == 2 and names == sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != "checkpoint")
    assert_same_saes(tmp_path / "one", out, names, atol=1e-4)


def test_a_rank_that_raises_ends_every_rank_with_one_line(tmp_path):
    """Module parallel under torchrun: rank 1 raises at step 10 (after that checkpoint): it says why, rank 0 ends too,
    within seconds, one line each; the checkpoint of step 10 stays. (Data parallel without torchrun: below.)"""
    out = tmp_path / "run"
    cmd = torchrun(2, "-m", "attnsae", *REF_ARGS, "--module-parallel", "2", "--out", str(out))
    t0 = time.time()
    proc = subprocess.run(cmd, env=step_hook("raise", 10, rank=1, env=_env()), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    lines = _one_line_each(proc.stderr, 2)
    assert any("injected failure at step 10" in line for line in lines), lines
    other = next(line for line in lines if "injected" not in line)
    assert "rank 0 of 2" in other and "--resume" in other, other
    assert torch.load(out / "checkpoint.pt", weights_only=False)["state"]["step"] == 10
    assert time.time() - t0 < 120


def test_processes_that_see_different_out_folders_are_refused(tmp_path):
    """Rank 1 trains into another folder than rank 0 (an --out that is not shared): every rank refuses, in one line,
    before training; nothing is written."""
    out = tmp_path / "run"
    one = run_cli(*REF_ARGS, "--out", str(out))  # a run rank 0 would resume; rank 1's folder has none
    assert one.returncode == 0, one.stderr
    before = sorted(p.name for p in out.iterdir())
    cmd = torchrun(2, "-m", "attnsae", *REF_ARGS, "--out", str(out), "--resume")
    proc = subprocess.run(cmd, env=step_hook("other-out", rank=1, env=_env()), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    for line in _one_line_each(proc.stderr, 2):
        assert "is not the same folder on every process" in line, line
    assert sorted(p.name for p in out.iterdir()) == before
    assert not (tmp_path / "run-elsewhere").exists()


def test_without_torchrun_a_rank_that_raises_ends_the_other_in_seconds(tmp_path):
    """Any launcher that sets RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT (no torchrun to signal the others): rank 1
    raises at step 10, and rank 0, waiting in a collective, ends with one "lost contact" line, no hang."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    procs = []
    t0 = time.time()
    for rank in (0, 1):
        env = dict(step_hook("raise", 10, rank=1, env=_env()), RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-m", "attnsae", *REF_ARGS, "--out", str(out)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 2 for p in procs), errs
    (failing,) = _one_line_each(errs[1], 1)
    (other,) = _one_line_each(errs[0], 1)
    assert "injected failure at step 10" in failing
    assert "rank 0 of 2: lost contact with another rank" in other and "--resume" in other
    assert time.time() - t0 < 120
