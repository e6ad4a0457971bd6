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
from conftest import run_cli
from dist_runs import RUNS, LayerSource

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
    for fa, fb in zip(one_ck["firing"], many_ck["firing"]):  # all-reduced firing counts: exactly the same
        assert all(torch.equal(fa[k], fb[k]) for k in fa)
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


def test_torchrun_on_the_reference_model_survives_a_killed_rank(tmp_path):
    one = run_cli(*REF_ARGS, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    out = tmp_path / "two"
    cmd = torchrun(2, "-m", "attnsae", *REF_ARGS, "--out", str(out))
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill rank 1 once a checkpoint exists
        m = out / "metrics.jsonl"
        if m.exists() and any(json.loads(l)["step"] >= 15 for l in m.read_text().splitlines() if l.strip()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    os.kill(_worker_pids(proc.pid)[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    lines = [l for l in err.splitlines() if l.startswith("attnsae: error:")]
    assert len(lines) == 1 and "rank 0 of 2" in lines[0] and "--resume" in lines[0], err[-3000:]
    assert 'attnsae/' not in err, err[-3000:]  # no traceback from attnsae's code
    assert 0 < torch.load(out / "checkpoint.pt", weights_only=False)["state"]["step"] < 40
    res = subprocess.run(cmd + ["--resume"], env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "one").iterdir() if p.is_dir())
    assert len(names) == 2 and names == sorted(p.name for p in out.iterdir() if p.is_dir())
    assert_same_saes(tmp_path / "one", out, names, atol=1e-4)
