"""The IOI study (attnsae.studies.ioi): per-prompt positions, exact no-op interventions, per-prompt S2 ablation, the
refusal of a model that cannot do IOI; one slow check that SmolLM2-135M does IOI.

The reference tokenizer is a code tokenizer with no single-token English names, so the fast tests use words that it
does keep whole (checked by single_token_names, not assumed)."""

from __future__ import annotations

import json

import pytest
import torch

from attnsae.errors import AttnsaeError
from attnsae.evals.splice import splice_saes
from attnsae.models import load_model
from attnsae.jobs.studies import run_ioi
from attnsae.studies.ioi import (build_ioi_dataset, corrupt, feature_ablation, noise, patch_scan,
                                 run_logit_diff, single_token_names, validate_ioi, zero_at_positions)
from attnsae.studies.ioi import patching
from attnsae.studies.ioi.ablation import active_at, error_ablation_hooks, feature_ablation_hooks
from conftest import make_llama_dir, random_sae, sharp_gpt2_dir

WORDS = ["None", "True", "False", "Path", "Error", "self", "data", "value", "Mary", "John"]


@pytest.fixture(scope="module")
def sharp(tmp_path_factory):
    """A 2-layer GPT-2 with scaled-up weights (interventions on hook_z move its logits) and the reference tokenizer."""
    return load_model(sharp_gpt2_dir(tmp_path_factory.mktemp("ioi") / "sharp", n_head=4))


@pytest.fixture(scope="module")
def names(sharp):
    kept = single_token_names(sharp.tokenizer, WORDS)
    assert "Mary" not in kept and len(kept) >= 4  # checked against the tokenizer, not assumed
    return kept


@pytest.fixture(scope="module")
def ds(sharp, names):
    return build_ioi_dataset(sharp.tokenizer, 8, seed=0, names=names)


def test_ioi_positions_are_per_prompt_for_prompts_of_different_lengths(sharp, ds):
    assert len(set(ds.lengths.tolist())) > 1 and len(set(ds.pos["S2"].tolist())) > 1
    tok = sharp.tokenizer
    for b in range(len(ds)):
        row, p = ds.tokens[b], {k: int(v[b]) for k, v in ds.pos.items()}
        assert row[p["IO"]] == ds.io_tok[b] and row[p["S1"]] == ds.s_tok[b] and row[p["S2"]] == ds.s_tok[b]
        assert p["END"] == ds.lengths[b] - 1 and tok.decode([int(row[p["AND"]])]) == " and"
        assert p["S2"] > max(p["IO"], p["S1"]) and (p["IO"] < p["S1"]) == (ds.specs[b].order == "ABBA")
        assert tok.decode(row[1:ds.lengths[b]].tolist()) == ds.prompts[b]
        assert (row[ds.lengths[b]:] == tok.bos_token_id).all()  # right-padded
    ld = run_logit_diff(sharp, ds)
    for b in range(len(ds)):  # the metric reads each prompt's own END: the same as running the prompt alone
        alone = sharp(ds.tokens[b:b + 1, :ds.lengths[b]])[0, -1]
        assert torch.isclose(ld[b], alone[ds.io_tok[b]] - alone[ds.s_tok[b]], atol=1e-4)


def test_names_that_are_not_single_tokens_are_refused(sharp):
    assert single_token_names(sharp.tokenizer, ["Mary", "self", "John"]) == ["self"]
    with pytest.raises(AttnsaeError, match="single tokens") as e:
        build_ioi_dataset(sharp.tokenizer, 4)  # the default English names: none is one token here
    assert "\n" not in str(e.value)


def test_corruptions_change_only_what_they_name(sharp, ds):
    tok = sharp.tokenizer
    abc = corrupt(tok, ds, "abc")
    assert (abc.tokens[torch.arange(len(ds)), abc.pos["S2"]] != ds.s_tok).all()
    assert (abc.tokens != ds.tokens).sum(1).eq(1).all()  # only S2 differs
    a = corrupt(tok, ds, "names_filler")
    assert all(p.order == q.order and {p.io, p.s}.isdisjoint({q.io, q.s}) for p, q in zip(a.specs, ds.specs))
    b = corrupt(tok, ds, "connector", connector="or")
    assert all(" or " in t and " and " not in t for t in b.prompts)
    shifted = corrupt(tok, ds, "names_filler_shifted")  # corruption A moved right whole: every role by one amount
    moved = torch.stack([shifted.pos[r] - a.pos[r] for r in ("IO", "S1", "AND", "S2", "END")])
    assert (moved > 0).all() and (moved == moved[0]).all()
    assert [p.io for p in shifted.specs] == [p.io for p in a.specs]


def test_feature_ablation_with_error_kept_and_nothing_ablated_leaves_the_logits_unchanged(sharp, ds):
    sae = random_sae(sharp, 0, d_sae=64)
    clean = sharp(ds.tokens)
    with sharp.hooks(fwd_hooks=feature_ablation_hooks(sae, 0, ds, [])(slice(None))):
        same = sharp(ds.tokens)
    torch.testing.assert_close(same, clean, atol=1e-4, rtol=0)
    with splice_saes(sharp, sae, with_error=False):  # the check can fail: the bare reconstruction moves them
        assert (sharp(ds.tokens) - clean).abs().max() > 1e-2
    res = feature_ablation(sharp, sae, ds, progress=False)
    assert res["spliced_max_abs_change"] < 1e-4 and res["n_candidates"] > 0


def test_head_scan_in_the_top_layers_only_matches_the_full_scan_there(sharp, ds):
    """head_layers=1: single heads are patched only in the layer where whole-layer patching moves the metric most
    (|effect|), with the same numbers as the full grid; the other layer's heads are None and never a top head."""
    abc = corrupt(sharp.tokenizer, ds, "abc")
    full = patch_scan(sharp, ds, abc, progress=False)
    part = patch_scan(sharp, ds, abc, progress=False, head_layers=1)
    for role, r in part["roles"].items():
        f = full["roles"][role]
        assert r["layer"] == f["layer"]
        top = max(range(2), key=lambda l: abs(f["layer"][l]))
        assert r["head_layers"] == [top] and f["head_layers"] == [0, 1]
        assert r["head"][top] == f["head"][top] and r["head"][1 - top] == [None] * 4
        assert {h["layer"] for h in patching.top_heads(part, role)} == {top}


def test_noising_with_the_clean_run_as_source_changes_nothing(sharp, ds):
    clean = run_logit_diff(sharp, ds)
    res = noise(sharp, ds, ds, layers=[0, 1])
    torch.testing.assert_close(torch.tensor(res["logit_diff"]), clean, atol=1e-5, rtol=0)
    assert res["kept"]["all"] == pytest.approx(1.0, abs=1e-5)
    scan = patch_scan(sharp, ds, ds, progress=False)
    for r in scan["roles"].values():
        assert torch.tensor(r["layer"]).abs().max() < 1e-5 and torch.tensor(r["head"]).abs().max() < 1e-5
    abc = corrupt(sharp.tokenizer, ds, "abc")  # the check can fail: a real corruption at layer 0 moves the metric
    assert abs(noise(sharp, ds, abc, layers=[0])["kept"]["all"] - 1) > 1e-3


def _z_after(model, layer: int, tokens, hooks) -> torch.Tensor:
    """hook_z of ``layer`` as the rest of the model reads it, with ``hooks`` in place: [batch, pos, d_in]."""
    seen = {}

    def save(z, hook=None):
        seen["z"] = z.detach().reshape(z.shape[0], z.shape[1], -1).clone()
        return z

    with model.hooks(fwd_hooks=hooks + [(f"blocks.{layer}.attn.hook_z", save)]):
        logits = model(tokens)
    return seen["z"], logits


@pytest.mark.parametrize("what", ["features", "error"])
def test_s2_ablation_touches_only_each_prompts_own_s2(sharp, ds, what):
    sae = random_sae(sharp, 0, d_sae=64, seed=3)
    active = (active_at(sharp, sae, 0, ds) > 0).any(0).nonzero()[:, 0].tolist()
    hooks = (feature_ablation_hooks(sae, 0, ds, active) if what == "features" else
             error_ablation_hooks(sae, 0, ds))(slice(None))
    z0, logits0 = _z_after(sharp, 0, ds.tokens, [])
    z1, logits1 = _z_after(sharp, 0, ds.tokens, hooks)
    changed = (z1 - z0).abs().amax(-1) > 1e-5  # [batch, pos]
    own = torch.zeros_like(changed)
    own[torch.arange(len(ds)), ds.pos["S2"]] = True
    assert (changed == own).all()  # every prompt's own S2 changes, and nothing else
    for b in range(len(ds)):  # before S2 a prompt's logits cannot move; from S2 on they do
        s2 = int(ds.pos["S2"][b])
        torch.testing.assert_close(logits1[b, :s2], logits0[b, :s2], atol=1e-4, rtol=0)
        assert (logits1[b, s2] - logits0[b, s2]).abs().max() > 1e-3


def test_zero_at_positions_zeroes_exactly_one_entry_per_prompt_and_feature():
    acts = torch.rand(3, 7, 5) + 0.1
    out = zero_at_positions([1, 4], torch.tensor([2, 5, 3]))(0, acts)
    zeroed = (out == 0).nonzero().tolist()
    assert zeroed == [[0, 2, 1], [0, 2, 4], [1, 5, 1], [1, 5, 4], [2, 3, 1], [2, 3, 4]]


def test_a_model_that_cannot_do_ioi_is_refused_in_one_line(tmp_path, names):
    model = load_model(make_llama_dir(tmp_path / "llama"))  # random weights: IO and S are a coin toss
    ds = build_ioi_dataset(model.tokenizer, 16, names=names)
    with pytest.raises(AttnsaeError, match="cannot do IOI") as e:
        validate_ioi(model, ds)
    assert "\n" not in str(e.value)
    with pytest.raises(AttnsaeError, match="cannot do IOI"):
        run_ioi(model, None, tmp_path / "out", n_prompts=16, names=names, progress=False)
    assert not (tmp_path / "out").exists()


def test_run_ioi_writes_json_report_and_plots_in_one_folder(sharp, names, tmp_path, monkeypatch):
    monkeypatch.setattr(patching, "MIN_LOGIT_DIFF", -float("inf"))  # let the random model through the validation
    monkeypatch.setattr(patching, "MIN_ACCURACY", 0.0)
    sae = random_sae(sharp, 0, d_sae=32)
    res = run_ioi(sharp, {0: sae}, tmp_path / "ioi", n_prompts=8, names=names, progress=False, top_features=3,
                  max_features=6)
    files = {p.name for p in (tmp_path / "ioi").iterdir()}
    assert {"ioi.json", "report.md", "patching.png", "noising.png", "ablation_L0.png", "dfa_L0.png"} <= files
    data = json.loads((tmp_path / "ioi" / "ioi.json").read_text())
    assert data["patching"]["layers"] == res["patching"]["layers"] and len(data["patching"]["layers"]) == 2
    assert len(data["ablation"]["0"]["features"]) == 6 and len(data["dfa"]["0"]) == 3
    assert set(data["noising"]) == {"abc", "names_filler", "names_filler_shifted", "connector"}
    floor = data["noising"]["abc"]["kept"]["all"]
    b = data["noising"]["connector"]
    assert b["removed_of_floor"]["all"] == pytest.approx((1 - b["kept"]["all"]) / (1 - floor), rel=0.05, abs=0.02)  # ioi.json: 4 digits
    for r in res["dfa"][0]:  # DFA by source sums back to the pre-activation at each prompt's S2
        for b in range(len(ds_of(res))):
            assert sum(r["by_src"][b]) + r["bias"] == pytest.approx(r["pre_act"][b], abs=1e-4)
    assert "# IOI on" in (tmp_path / "ioi" / "report.md").read_text()


def ds_of(res: dict) -> list:
    return res["dataset"]["prompts"]


@pytest.mark.integration  # SmolLM2
def test_smollm2_does_ioi():
    model = load_model("smollm2-135m")
    ds = build_ioi_dataset(model.tokenizer, 8, seed=0)
    assert len(ds.names) >= 20  # most of the default names are one token in its tokenizer
    summary = validate_ioi(model, ds)["summary"]["all"]
    assert summary["mean_logit_diff"] > 3 and summary["accuracy"] == 1.0


@pytest.mark.integration
def test_cli_study_ioi_refuses_a_model_that_cannot_do_it(tmp_path):
    """The reference model reads code: `attnsae study ioi` on it is one error line, and no folder is written."""
    from conftest import assert_one_line_error, run_cli

    out = tmp_path / "ioi"
    proc = run_cli("study", "ioi", "--model", "attnsae-stdlib-2l", "--n-prompts", "8", "--no-per-head", "--out",
                   str(out), "--no-progress", timeout=300)
    assert_one_line_error(proc)
    assert not out.exists()
