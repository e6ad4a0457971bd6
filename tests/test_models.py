"""The shipped reference model: offline loading, hooks, and the quality its model card promises."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from attnsae import corpus
from attnsae.studies import head_scores as reference
from attnsae.errors import AttnsaeError
from attnsae.models import load_model
from attnsae.models import REFERENCE_DIR
from conftest import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def card():
    return json.loads((REFERENCE_DIR / "card.json").read_text())


@pytest.fixture(scope="module")
def val_rows(tokenizer):
    c = corpus.load_corpus(tokenizer, "stdlib", "validation", context_size=256, progress=False)
    return torch.from_numpy(c.tokens)


def patterns(model, tokens):
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    return [cache[f"blocks.{l}.attn.hook_pattern"] for l in range(model.cfg.n_layers)]


def test_reference_model_loads_offline_with_attention_hooks(ref_model):
    assert ref_model.cfg.n_layers == 2 and ref_model.cfg.n_heads == 8 and ref_model.cfg.d_model == 256
    tokens = torch.tensor([[ref_model.tokenizer.bos_token_id, 5, 6, 7]])
    _, cache = ref_model.run_with_cache(tokens)
    for l in (0, 1):
        assert cache[f"blocks.{l}.attn.hook_z"].shape == (1, 4, 8, 32)
        assert cache[f"blocks.{l}.attn.hook_v"].shape == (1, 4, 8, 32)
        assert cache[f"blocks.{l}.attn.hook_pattern"].shape == (1, 8, 4, 4)


def test_reference_name_and_default_are_the_same_model(ref_model):
    other = load_model("attnsae-stdlib-2l")
    tokens = torch.arange(1, 20)[None]
    assert torch.equal(ref_model(tokens), other(tokens))


def test_reference_model_matches_hf_logits(ref_model):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(REFERENCE_DIR, attn_implementation="eager").eval()
    tokens = torch.randint(1, 8192, (2, 50))
    with torch.no_grad():
        torch.testing.assert_close(ref_model(tokens), hf(tokens).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.acceptance  # the model card's claim, re-measured on the whole validation split
def test_model_card_validation_bits_per_byte_is_measured_and_below_one(ref_model, card, val_rows):
    v = card["loss"]["validation"]
    assert v["bits_per_byte"] <= 1.0
    # re-measure on the whole validation split through the bridge: the card must be the truth
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(val_rows), 64):
            b = val_rows[i : i + 64]
            lp = reference.token_logprobs(ref_model(b), b)
            total -= lp.sum().item()
            n += lp.numel()
    assert n == v["tokens_scored"]
    assert abs(total / n - v["ce_nats_per_token"]) < 2e-3


def test_layer1_has_an_induction_head_and_random_repeats_gain_4_nats(ref_model):
    tokens = reference.repeated_random_tokens(64, 60, ref_model.cfg.d_vocab, ref_model.tokenizer.bos_token_id,
                                              seed=1)
    pats = patterns(ref_model, tokens)
    scores = reference.induction_scores(pats, 60)
    assert scores[1].max() >= 0.5, scores
    with torch.no_grad():
        gain = reference.repeat_gain(ref_model(tokens), tokens, 60)
    assert gain >= 4.0


def test_repeated_validation_text_gains_1_5_nats(ref_model, val_rows):
    tokens = reference.repeated_text(val_rows[:64], 100, ref_model.tokenizer.bos_token_id)
    with torch.no_grad():
        assert reference.repeat_gain(ref_model(tokens), tokens, 100) >= 1.5


def test_layer0_has_a_previous_token_head(ref_model, val_rows):
    scores = reference.previous_token_scores(patterns(ref_model, val_rows[:32]))
    assert scores[0].max() >= 0.35, scores


def test_card_head_scores_match_the_model(ref_model, card):
    tokens = reference.repeated_random_tokens(64, 60, ref_model.cfg.d_vocab, ref_model.tokenizer.bos_token_id)
    scores = reference.induction_scores(patterns(ref_model, tokens), 60)
    np.testing.assert_allclose(scores.numpy(), np.array(card["heads"]["induction"]), atol=1e-3)


def reference_mix():
    """``scripts/reference_mix.py``: the reference model's training mix (training code lives in scripts/)."""
    import importlib.util
    import sys

    if "reference_mix" not in sys.modules:  # registered before it runs: its dataclasses look their module up
        path = Path(__file__).parents[1] / "scripts" / "reference_mix.py"
        spec = importlib.util.spec_from_file_location("reference_mix", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["reference_mix"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["reference_mix"]


def test_training_mix_plants_repeats():
    cfg = reference_mix().ReferenceConfig(batch_size=64)
    stream = np.arange(1, 10_000) % 8000 + 1
    batch = reference_mix().mix_batch(stream, cfg, np.random.default_rng(0), bos_id=0)
    assert batch.shape == (64, 256) and (batch[:, 0] == 0).all()
    assert np.array_equal(batch, reference_mix().mix_batch(stream, cfg, np.random.default_rng(0), bos_id=0))


def test_lr_schedule_warms_up_then_decays_to_ten_percent():
    cfg = reference_mix().ReferenceConfig()
    assert cfg.lr_at(0) == pytest.approx(cfg.lr / cfg.warmup_steps)
    assert cfg.lr_at(cfg.warmup_steps) == pytest.approx(cfg.lr)
    assert cfg.lr_at(cfg.total_steps) == pytest.approx(0.1 * cfg.lr)


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.integration
def test_unknown_model_name_is_one_clear_error():
    with pytest.raises(AttnsaeError, match="could not load model"):
        load_model("no-such-org/no-such-model-xyz")
    assert_one_line_error(run_cli("info", "--model", "no-such-org/no-such-model-xyz"), "could not load model")


@pytest.mark.integration
def test_missing_weights_is_one_clear_error(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(REFERENCE_DIR / "config.json", d)
    shutil.copy(REFERENCE_DIR / "tokenizer.json", d)
    shutil.copy(REFERENCE_DIR / "tokenizer_config.json", d)
    assert_one_line_error(run_cli("info", "--model", str(d)), "could not load the model")


@pytest.mark.integration
def test_corrupt_weights_is_one_clear_error(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(REFERENCE_DIR, d)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 3])
    assert_one_line_error(run_cli("info", "--model", str(d)), "could not load the model")


@pytest.mark.integration
def test_directory_without_config_is_one_clear_error(tmp_path):
    assert_one_line_error(run_cli("info", "--model", str(tmp_path)), "config.json")


@pytest.mark.integration
def test_empty_corpus_is_one_clear_error(tmp_path):
    assert_one_line_error(run_cli("corpus", "--source", str(tmp_path)), "no full context")


@pytest.mark.integration
def test_context_larger_than_n_ctx_is_one_clear_error():
    assert_one_line_error(run_cli("corpus", "--context-size", "512"), "n_ctx")


def test_check_tokens_is_the_one_token_check(tiny_model):
    """Every stage checks token ids with models.check_tokens: 1-D is one context; ids, length and shape are checked."""
    from attnsae.models import check_tokens

    t = check_tokens(tiny_model, [0, 5, 7])
    assert t.shape == (1, 3) and t.dtype == torch.int64
    assert check_tokens(tiny_model, np.array([[0, 1], [0, 2]], dtype=np.int32)).dtype == torch.int64
    bad = [(torch.zeros(2, 0, dtype=torch.long), "no tokens"), (torch.zeros(2, 2, 2, dtype=torch.long), "n_contexts"),
           (torch.zeros(1, 3), "integers"), (torch.zeros(1, 65, dtype=torch.long), "model's context of 64"),
           (torch.tensor([[0, 8192]]), r"0\.\.8191"), (torch.tensor([[-1, 3]]), "vocabulary")]
    for tokens, match in bad:
        with pytest.raises(AttnsaeError, match=match):
            check_tokens(tiny_model, tokens)
    with pytest.raises(AttnsaeError, match="at least 2"):
        check_tokens(tiny_model, [[0]], min_len=2)
