"""``attnsae attribute``: what it prints, its JSON, and one clear line for each bad input."""

from __future__ import annotations

import json

import pytest
import torch

import attnsae.models
from attnsae.cli import main
from attnsae.models import REFERENCE_NAME
from attnsae.sae.model import SAE, SAEConfig
from attnsae.sae.formats import save_sae
from conftest import assert_one_line_error, run_cli

PROMPT = "import os\ndef main(path):\n    return os.path.join(path, 'x')\n"


def saved_sae(path, layer=1, d_in=256, hook=None, model=REFERENCE_NAME, seed=0) -> str:
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_in=d_in, d_sae=128, hook_name=hook or f"blocks.{layer}.attn.hook_z", model_name=model,
                        layer=layer))
    save_sae(sae, path)
    return str(path)


@pytest.fixture(scope="module")
def sae_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("attr_cli")
    return {"l0": saved_sae(root / "l0", layer=0, seed=1), "l1": saved_sae(root / "l1", layer=1, seed=2),
            "resid": saved_sae(root / "resid", hook="blocks.1.hook_resid_pre"),
            "gpt2": saved_sae(root / "gpt2", model="gpt2"),
            "wide": saved_sae(root / "wide", d_in=512, model="")}


@pytest.fixture
def in_process(ref_model, monkeypatch, capsys):
    """Run ``attnsae ARGS`` in this process with the session's reference model: (exit code, stdout, stderr)."""
    monkeypatch.setattr(attnsae.models, "load_model", lambda *a, **k: ref_model)

    def run(*args: str):
        rc = main(list(args))
        out = capsys.readouterr()
        return rc, out.out, out.err

    return run


def test_attribute_json_holds_the_exact_tree(sae_dirs):
    proc = run_cli("attribute", "--sae", sae_dirs["l1"], "--upstream-sae", sae_dirs["l0"], "--prompt", PROMPT,
                   "--feature", "3", "--depth", "2", "--top-k", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["feature"] == 3 and d["layer"] == 1
    assert d["max_relative_residual"] < 1e-5
    root = d["rdfa"]["root"]
    assert root["value"] == pytest.approx(d["pre_activation"], rel=1e-5, abs=1e-6)
    assert sum(c["value"] for c in root["children"]) + sum(root["remainders"].values()) == pytest.approx(
        root["value"], rel=1e-4, abs=1e-5)
    # without --position: the position where the feature is largest
    by_src_pos = d["position"]
    assert 0 <= by_src_pos < len(d["rdfa"]["tokens"])
    assert len(d["logits"]["top_tokens"]) == 10


def test_attribute_prints_sources_tree_and_logits(in_process, sae_dirs):
    rc, out, err = in_process("attribute", "--sae", sae_dirs["l1"], "--prompt", PROMPT, "--feature", "5",
                              "--position", "4", "--depth", "1", "--top-k", "2")
    assert rc == 0, err
    assert "feature 5 of blocks.1.attn.hook_z at position 4" in out
    for needle in ("top sources", "by head:", "RDFA tree", "blocks.1.attn head", "hook_embed", "(other_sources_heads)",
                   "direct logit effect"):
        assert needle in out


def test_feature_out_of_range_is_one_line(sae_dirs):
    proc = run_cli("attribute", "--sae", sae_dirs["l1"], "--prompt", "x", "--feature", "128")
    assert_one_line_error(proc, "feature 128 is out of range", "0..127")


def test_sae_on_another_hook_is_one_line(sae_dirs):
    proc = run_cli("attribute", "--sae", sae_dirs["resid"], "--prompt", "x", "--feature", "0")
    assert_one_line_error(proc, "blocks.1.hook_resid_pre", "attn.hook_z")


def test_prompt_longer_than_context_is_one_line(sae_dirs):
    proc = run_cli("attribute", "--sae", sae_dirs["l1"], "--prompt", "a b c d " * 200, "--feature", "0")
    assert_one_line_error(proc, "longer than the model's context of 256")


def one_error_line(rc: int, err: str) -> str:
    assert rc != 0
    lines = [l for l in err.splitlines() if l.startswith("attnsae: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_sae_on_another_model_is_one_line(in_process, sae_dirs):
    line = one_error_line(*in_process("attribute", "--sae", sae_dirs["gpt2"], "--prompt", "x", "--feature", "0")[::2])
    assert "trained on model 'gpt2'" in line and "--model gpt2" in line
    line = one_error_line(*in_process("attribute", "--sae", sae_dirs["wide"], "--prompt", "x", "--feature", "0")[::2])
    assert "d_in 512" in line and "another model" in line


def test_position_out_of_range_is_one_line(in_process, sae_dirs):
    line = one_error_line(*in_process("attribute", "--sae", sae_dirs["l1"], "--prompt", "x y", "--feature", "0",
                                      "--position", "99")[::2])
    assert "position 99 is out of range" in line
