"""Shared fixtures and helpers (tests import helpers from here and from ``tiny_archs``, never from a test module):
the shipped reference model (loaded once) and its tokenizer, small random models, random SAEs and token contexts, CLI
runners, a headless browser (``browser``: tests/browser.py)."""

from __future__ import annotations

import os
import subprocess

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ----------------------------------------------------------------------------------------------- tiers and threads
# `python -m pytest -q tests` runs every tier on two pytest-xdist workers (pyproject.toml's addopts), one test file
# per worker at a time. Tiers (markers; `-m unit` is the developer's loop):
#   unit         in-process checks: exactness, kernels, configs, formats, views; every test not marked otherwise
#   integration  starts a process or a browser (the CLI, torchrun, the explorer's page) or loads SmolLM2
#   acceptance   a shipped claim measured whole: the quickstart run, the model card's bits per byte
# A unit test that starts a process fails, naming the marker it needs. Each worker, and every process a test starts,
# gets an equal share of the cores (THREADS), so two workers never oversubscribe the machine.
TIERS = ("unit", "integration", "acceptance")
THREADS = max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)  # read by torch in this worker and in every process it starts
_in_unit_test = False


# the longest files first, so that the two workers finish together (the quickstart alone is minutes on one core)
LONGEST_FIRST = ("test_quickstart.py", "test_smollm2.py", "test_bad_inputs.py", "test_models.py",
                 "test_distributed.py", "test_data_safety.py", "test_training.py")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    """Every test that is not integration or acceptance is unit (before ``-m`` selects); the longest files run
    first."""
    for item in items:
        if not any(item.get_closest_marker(t) for t in TIERS[1:]):
            item.add_marker(pytest.mark.unit)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order otherwise kept


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    global _in_unit_test
    _in_unit_test = item.get_closest_marker("unit") is not None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item) -> None:
    """Teardown is not the test's: the session's fixtures (a plugin's too) may start processes as they close."""
    global _in_unit_test
    _in_unit_test = False


def not_in_a_unit_test(what: str) -> None:
    """Fail the running unit test that does ``what`` (starts a process, opens a browser): it belongs elsewhere."""
    if _in_unit_test:
        pytest.fail(f"a unit test {what}: mark it @pytest.mark.integration (see the tiers in tests/conftest.py)",
                    pytrace=False)


_popen_init = subprocess.Popen.__init__


def _popen_outside_unit_tests(self, *args, **kwargs) -> None:
    not_in_a_unit_test("starts a process")
    _popen_init(self, *args, **kwargs)


subprocess.Popen.__init__ = _popen_outside_unit_tests


@pytest.fixture(scope="session")
def ref_model():
    import attnsae

    return attnsae.load_model()


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import PreTrainedTokenizerFast

    from attnsae.models import REFERENCE_DIR

    return PreTrainedTokenizerFast.from_pretrained(REFERENCE_DIR)


def run_cli(*args: str, timeout: float = 600, cwd=None, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    """Run ``attnsae ARGS`` in a new process (offline, in folder ``cwd``, with ``env`` added), returning it: a fork
    of a pre-warmed parent that has done the slow imports (tests/cli_runner.py), or with ``ATTNSAE_TEST_FORK=0`` a
    plain ``python -m attnsae`` subprocess."""
    from cli_runner import run_attnsae

    not_in_a_unit_test("runs the CLI")
    base = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONWARNINGS="ignore")
    return run_attnsae(list(args), base, env, cwd=cwd, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """A CLI failure: non-zero exit, no traceback, exactly one ``attnsae: error:`` line naming the problem."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("attnsae: error:")]
    assert len(errors) == 1, proc.stderr
    for n in needles:
        assert n.lower() in errors[0].lower(), errors[0]


def make_gpt2_dir(path, n_layer=2, n_head=4, n_embd=32, n_ctx=64, seed=0):
    """A small random GPT-2 (HF format) with the reference tokenizer, saved at ``path``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from attnsae.models import REFERENCE_DIR

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=8192, n_positions=n_ctx, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    PreTrainedTokenizerFast.from_pretrained(REFERENCE_DIR).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return make_gpt2_dir(tmp_path_factory.mktemp("tiny") / "gpt2")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from attnsae.models import load_model

    return load_model(tiny_model_dir)


def sharp_gpt2_dir(path, n_head: int, scale: float = 10.0) -> str:
    """A random 2-layer GPT-2 with weights scaled up, so that intervening on hook_z visibly moves the logits."""
    import torch
    from transformers import GPT2LMHeadModel

    make_gpt2_dir(path, n_head=n_head, n_embd=32, seed=n_head)
    hf = GPT2LMHeadModel.from_pretrained(path)
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim == 2:
                p.mul_(scale)
    hf.save_pretrained(path)
    return str(path)


def make_llama_dir(path, n_heads=4, n_kv_heads=2, hidden=64, bias=False, seed=0):
    """A small random Llama (RMSNorm, rotary, GQA) in HF format with the reference tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from attnsae.models import REFERENCE_DIR

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=8192, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, max_position_embeddings=64,
                      bos_token_id=0, eos_token_id=0, attention_bias=bias)
    model = LlamaForCausalLM(cfg)
    if bias:  # HF initialises biases to zero: make them count
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.5)
    model.save_pretrained(path)
    PreTrainedTokenizerFast.from_pretrained(REFERENCE_DIR).save_pretrained(path)
    return str(path)


def random_sae(model_or_d_in, layer: int, d_sae: int = 64, seed: int = 0, architecture: str = "relu",
               k: int | None = None, apply_b_dec_to_input: bool = True, bias_scale: float = 0.3):
    """A random SAE on ``blocks.{layer}.attn.hook_z`` with non-zero biases (normal, std ``bias_scale``), so the bias
    terms are exercised; about half its features fire.

    ``model_or_d_in``: a model (d_in is its ``n_heads * d_head`` and the SAE names it as its model) or a bare d_in
    (no model name: any model of that width). TopK gets ``k`` = 8 unless given.
    """
    import torch

    from attnsae.models import model_name
    from attnsae.sae.model import SAE, SAEConfig

    if isinstance(model_or_d_in, int):
        d_in, name = model_or_d_in, ""
    else:
        c = model_or_d_in.cfg
        d_in, name = c.n_heads * c.d_head, model_name(model_or_d_in)
    if architecture == "topk" and k is None:
        k = 8
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, architecture=architecture, k=k,
                        hook_name=f"blocks.{layer}.attn.hook_z", model_name=name,
                        apply_b_dec_to_input=apply_b_dec_to_input))
    with torch.no_grad():
        sae.b_dec.normal_(0, bias_scale)
        sae.b_enc.normal_(0, bias_scale)
    return sae


def identity_sae(d_in: int, layer: int):
    """x_hat == x exactly: f = [relu(x), relu(-x)], W_dec = [I; -I]."""
    import torch

    from attnsae.sae.model import SAE, SAEConfig

    sae = SAE(SAEConfig(d_in=d_in, d_sae=2 * d_in, hook_name=f"blocks.{layer}.attn.hook_z"))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    return sae


def zero_sae(d_in: int, layer: int):
    """x_hat == 0: a random SAE with its decoder and decoder bias zeroed."""
    import torch

    sae = random_sae(d_in, layer)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.zero_()
    return sae


def saved_sae(path, layer: int = 1, d_in: int = 256, hook: str | None = None, model: str | None = None,
              seed: int = 0) -> str:
    """A random SAE saved (SAELens format) at ``path``; ``model`` defaults to the reference model's name."""
    import torch

    from attnsae.models import REFERENCE_NAME
    from attnsae.sae.formats import save_sae
    from attnsae.sae.model import SAE, SAEConfig

    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_in=d_in, d_sae=128, hook_name=hook or f"blocks.{layer}.attn.hook_z",
                        model_name=REFERENCE_NAME if model is None else model, layer=layer))
    save_sae(sae, path)
    return str(path)


def fake_dashboards(root, saes: dict) -> str:
    """A minimal dashboards folder for ``{layer: SAE}``: just the index.html the explorer reads (SAE names L<layer>,
    their fingerprints, families cycling induction / short-range / long-range by feature index)."""
    import json
    from pathlib import Path

    from attnsae.sae.checks import fingerprint

    index = {"families": {"names": ["induction", "short-range", "long-range"]},
             "saes": [{"name": f"L{l}", "layer": l, "d_sae": s.cfg.d_sae, "dir": f"data/L{l}",
                       "fingerprint": fingerprint(s), "family": [j % 3 for j in range(s.cfg.d_sae)]}
                      for l, s in saes.items()]}
    Path(root).mkdir(parents=True, exist_ok=True)
    (Path(root) / "index.html").write_text(f"<script>window.ATTNSAE_INDEX = {json.dumps(index)};</script>")
    return str(root)


def random_tokens(n: int = 6, pos: int = 12, seed: int = 0):
    """Random token contexts int64 [n, pos] of the 8192-token vocabulary, BOS (0) at position 0."""
    import torch

    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 8192, (n, pos), generator=g)
    tokens[:, 0] = 0
    return tokens


def assert_tree_closes(res, rel=1e-4):
    """Every RDFA node with children or remainders sums back to its value; returns how many such nodes."""
    n_with_children = 0
    for node in res.root.walk():
        if node.children or node.remainders:
            n_with_children += 1
            assert abs(node.residual()) <= rel * node.scale() + 1e-7, (node.name, node.residual(), node.scale())
    assert res.closes() and res.to_dict()["closure"]["closes"]
    return n_with_children


# ------------------------------------------------------------------------------------------------ headless browser

@pytest.fixture(scope="module")
def _chromium():
    """One headless Chromium per test module (tests/browser.py); skips the test without one (see require_browser)."""
    from browser import Browser, require_browser

    not_in_a_unit_test("opens a browser")
    with Browser(require_browser()) as browser:
        yield browser


@pytest.fixture
def browser(_chromium):
    """The module's Chromium for one test: ``browser.open(url)`` gives a new recorded page (file:// or http://) in a
    fresh context; the test's pages are closed after it."""
    yield _chromium
    _chromium.close_pages()


def loss_both_ways(sae, spec, x) -> list[tuple]:
    """``sae_loss`` of ``sae`` on ``x`` through the sparse kernels, then the dense way: [(StepOutput, grads)] * 2
    (a parameter without a gradient gets zeros)."""
    import torch

    from attnsae.training.losses import sae_loss

    runs = []
    for use_kernel in (True, False):
        sae.zero_grad(set_to_none=True)
        out = sae_loss(sae, spec, x, None, 1.0, sparse_kernel=use_kernel)
        out.loss.backward()
        runs.append((out, [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in sae.parameters()]))
    return runs


def step_hook(do: str, at: int = 0, rank: int = 0, env: dict | None = None) -> dict:
    """An environment in which process ``rank`` of an ``attnsae train`` run does ``do`` ("stop", "raise",
    "other-out") at step ``at`` (tests/step_hook/sitecustomize.py); a single process counts as rank 0."""
    from pathlib import Path

    env = dict(os.environ if env is None else env)
    hook = str(Path(__file__).parent / "step_hook")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (hook, env.get("PYTHONPATH", "")) if p)
    env.setdefault("RANK", "0")  # one process is rank 0; torchrun sets each worker's own
    return dict(env, ATTNSAE_TEST_DO=do, ATTNSAE_TEST_RANK=str(rank), ATTNSAE_TEST_AT_STEP=str(at))


def wait_until_stopped(pid: int, proc=None, timeout: float = 300) -> None:
    """Wait until process ``pid`` has stopped itself (SIGSTOP: state T); fail if ``proc`` ends first."""
    import time
    from pathlib import Path

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {proc.returncode}) before it stopped")
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError("timed out waiting for the process to stop itself")
