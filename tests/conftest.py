"""Shared fixtures: the shipped reference model (loaded once) and its tokenizer."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ref_model():
    import attnsae

    return attnsae.load_model()


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import PreTrainedTokenizerFast

    from attnsae.models import REFERENCE_DIR

    return PreTrainedTokenizerFast.from_pretrained(REFERENCE_DIR)


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``attnsae ARGS`` in a subprocess (offline), returning the completed process."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "attnsae", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


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
