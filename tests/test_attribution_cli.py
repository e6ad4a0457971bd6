"""``attnsae attribute``: what it prints, its JSON, and one clear line for each bad input."""

from __future__ import annotations

import json

import pytest

import attnsae.models
from attnsae.attribution.rdfa_tree import CLOSURE_TOLERANCE
from attnsae.attribution.report import AttributionReport
from attnsae.cli import main
from conftest import assert_one_line_error, run_cli, saved_sae

PROMPT = "import os\ndef main(path):\n    return os.path.join(path, 'x')\n"


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


@pytest.mark.integration
def test_attribute_json_holds_the_exact_tree(ref_model, tokenizer, sae_dirs, tmp_path):
    """The CLI's numbers against a computation that shares nothing with it but the saved weights and the model: the
    tokens, the feature's pre-activation at every position (from hook_z of a plain forward), the chosen position,
    the bias, the DFA by source and head (from the attention pattern and v), and the logit effect."""
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    from attnsae.models import REFERENCE_NAME
    from attnsae.sae.formats import save_sae
    from attnsae.sae.model import SAE, SAEConfig

    torch.manual_seed(5)  # a layer-1 SAE with non-zero biases, so that b_dec and b_enc are both exercised
    sae = SAE(SAEConfig(d_in=256, d_sae=128, hook_name="blocks.1.attn.hook_z", model_name=REFERENCE_NAME, layer=1))
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3)
        sae.b_enc.normal_(0, 0.3)
    save_sae(sae, tmp_path / "l1")
    feat = 8  # fires at 4 of the prompt's 23 positions
    proc = run_cli("attribute", "--sae", str(tmp_path / "l1"), "--upstream-sae", sae_dirs["l0"], "--prompt", PROMPT,
                   "--feature", str(feat), "--depth", "2", "--top-k", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["feature"] == feat and d["layer"] == 1
    assert d["max_relative_residual"] < 1e-5
    assert d["closes"] and d["tolerance"] == CLOSURE_TOLERANCE and d["rdfa"]["closure"]["closes"]

    # independently: BOS + the tokenizer's ids, a plain forward pass, the weights as saved
    tokens = torch.tensor([tokenizer.bos_token_id] + tokenizer(PROMPT, add_special_tokens=False)["input_ids"])
    assert d["rdfa"]["tokens"] == tokens.tolist()
    w = load_file(Path(tmp_path / "l1") / "sae_weights.safetensors")
    W_enc, b_enc, b_dec, d_row = w["W_enc"][:, feat], w["b_enc"][feat], w["b_dec"], w["W_dec"][feat]
    with torch.no_grad():
        _, cache = ref_model.run_with_cache(tokens[None])
    z = cache["blocks.1.attn.hook_z"][0]  # [S, heads, d_head]
    S, H, dh = z.shape
    pre = (z.reshape(S, -1) - b_dec) @ W_enc + b_enc  # [S]
    act = pre.clamp_min(0)
    t = int(act.argmax()) if (act > 0).any() else int(pre.argmax())
    assert d["position"] == t and 0 < int((act > 0).sum()) < S  # it fires somewhere, not everywhere
    assert d["pre_activation"] == pytest.approx(float(pre[t]), rel=1e-5, abs=1e-5)
    assert d["activation"] == pytest.approx(float(act[t]), rel=1e-5, abs=1e-5)
    assert d["bias"] == pytest.approx(float(b_enc - b_dec @ W_enc), rel=1e-5, abs=1e-6)
    assert d["rdfa"]["root"]["value"] == pytest.approx(float(pre[t]), rel=1e-5, abs=1e-5)
    # DFA: pre[t] - bias = Σ_{s,h} A_h[t, s] · (W_enc[h-slice] · v_h[s])
    A = cache["blocks.1.attn.hook_pattern"][0][:, t, :]  # [H, S]
    v = cache["blocks.1.attn.hook_v"][0]  # [S, H, d_head]
    terms = A.T * torch.einsum("shd,hd->sh", v, W_enc.view(H, dh))  # [S, H]
    torch.testing.assert_close(torch.tensor(d["rdfa"]["by_src"]), terms.sum(1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(d["rdfa"]["by_head"]), terms.sum(0), rtol=1e-4, atol=1e-5)
    assert float(terms.sum()) + d["bias"] == pytest.approx(float(pre[t]), rel=1e-4, abs=1e-4)
    # direct logit effect: the decoder row through W_O, the final LayerNorm (scale frozen) and the unembedding
    direction = d_row @ ref_model.W_O[1].detach().reshape(H * dh, -1)
    g = ref_model.ln_final._original_component.weight.detach()
    effect = ((direction - direction.mean()) * g) @ ref_model.W_U.detach()
    assert d["logits"]["top_tokens"] == effect.topk(10).indices.tolist()
    torch.testing.assert_close(torch.tensor(d["logits"]["top_values"]), effect.topk(10).values, rtol=1e-4, atol=1e-5)
    assert "final norm" in d["logits"]["definition"]


def test_attribute_prints_sources_tree_and_logits(in_process, sae_dirs):
    rc, out, err = in_process("attribute", "--sae", sae_dirs["l1"], "--prompt", PROMPT, "--feature", "5",
                              "--position", "4", "--depth", "1", "--top-k", "2")
    assert rc == 0, err
    assert "feature 5 of blocks.1.attn.hook_z at position 4" in out
    for needle in ("top sources", "by head:", "RDFA tree", "blocks.1.attn head", "hook_embed", "(other_sources_heads)",
                   "direct logit effect"):
        assert needle in out


@pytest.mark.integration
def test_feature_out_of_range_is_one_line(sae_dirs):
    proc = run_cli("attribute", "--sae", sae_dirs["l1"], "--prompt", "x", "--feature", "128")
    assert_one_line_error(proc, "feature 128 is out of range", "0..127")


@pytest.mark.integration
def test_sae_on_another_hook_is_one_line(sae_dirs):
    proc = run_cli("attribute", "--sae", sae_dirs["resid"], "--prompt", "x", "--feature", "0")
    assert_one_line_error(proc, "blocks.1.hook_resid_pre", "attn.hook_z")


@pytest.mark.integration
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
    assert "d_in 512" in line and "use an SAE trained on this model" in line


def test_position_out_of_range_is_one_line(in_process, sae_dirs):
    line = one_error_line(*in_process("attribute", "--sae", sae_dirs["l1"], "--prompt", "x y", "--feature", "0",
                                      "--position", "99")[::2])
    assert "position 99 is out of range" in line


def test_a_tree_that_does_not_close_is_an_error(in_process, sae_dirs, monkeypatch):
    """The report is still printed, then one error line and exit 2: a tree that does not sum up is not trusted."""
    monkeypatch.setattr(AttributionReport, "closes", property(lambda self: False))
    rc, out, err = in_process("attribute", "--sae", sae_dirs["l1"], "--prompt", PROMPT, "--feature", "5",
                              "--depth", "1", "--top-k", "2")
    assert rc == 2 and "RDFA tree" in out
    assert "does not close" in one_error_line(rc, err)
