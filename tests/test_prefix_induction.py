"""Long- vs short-prefix induction study (attnsae.studies.prefix_induction and its parts): series labels follow
their heads, the text intervention touches only token src-2, the reference model's induction heads are found, and
the study writes its folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import random_sae, random_tokens


PERM = [3, 6, 0, 7, 1, 2, 5, 4]  # new head j of layer 1 = old head PERM[j]: 1.1, 1.2, 1.6 move to 1.4, 1.5, 1.1


def _permute_heads(src_dir, dst_dir, layer: int, perm: list[int]) -> str:
    """Save the HF GPT-2 in ``src_dir`` with the heads of ``layer`` reordered (W_Q, W_K, W_V, W_O blocks and biases)."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(src_dir)
    attn = hf.transformer.h[layer].attn
    d, H = hf.config.n_embd, hf.config.n_head
    dh = d // H
    cols = torch.cat([torch.arange(p * dh, (p + 1) * dh) for p in perm])  # within one of q, k, v
    qkv = torch.cat([cols + i * d for i in range(3)])
    with torch.no_grad():
        attn.c_attn.weight.copy_(attn.c_attn.weight[:, qkv].clone())
        attn.c_attn.bias.copy_(attn.c_attn.bias[qkv].clone())
        attn.c_proj.weight.copy_(attn.c_proj.weight[cols].clone())  # rows: head-concatenated z
    hf.save_pretrained(dst_dir)
    AutoTokenizer.from_pretrained(src_dir).save_pretrained(dst_dir)
    return str(dst_dir)


@pytest.fixture(scope="module")
def sweeps(ref_model, tmp_path_factory):
    from attnsae.models import REFERENCE_DIR, load_model
    from attnsae.studies.prefix_sweep import prefix_sweep

    permuted = load_model(_permute_heads(REFERENCE_DIR, tmp_path_factory.mktemp("perm") / "gpt2", 1, PERM))
    kw = dict(n_seqs=12, seq_len=48, max_prefix=3, seed=0, progress=False)
    return prefix_sweep(ref_model, **kw), prefix_sweep(permuted, **kw)


def test_sweep_series_follow_their_heads_under_permutation(sweeps, tmp_path):
    from attnsae.views.prefix_plots import sweep_plot

    orig, perm = sweeps[0].series(), sweeps[1].series()
    for j, old in enumerate(PERM):
        np.testing.assert_allclose(perm[f"L1H{j}"], orig[f"L1H{old}"], atol=2e-4)
    for h in range(8):  # layer 0 untouched
        np.testing.assert_allclose(perm[f"L0H{h}"], orig[f"L0H{h}"], atol=2e-4)
    # and the plot draws each series under its own head's name
    d = sweeps[1].to_dict()
    fig = sweep_plot(d, tmp_path / "s.png", highlight=["L1H1", "L1H4", "L1H5"])
    lines = {l.get_label(): list(l.get_ydata()) for l in fig.axes[0].get_lines()}
    assert set(lines) == set(d["series"])
    for name, y in lines.items():
        assert y == d["series"][name], name


def test_sweep_finds_reference_induction_heads(sweeps):
    from attnsae.studies.prefix_induction import induction_heads

    assert induction_heads(sweeps[0], 0.3) == [(1, 1), (1, 2), (1, 6)]
    assert induction_heads(sweeps[1], 0.3) == [(1, 1), (1, 4), (1, 5)]  # where PERM put them
    s = sweeps[0].mean  # [K, L, H]: the induction heads score higher with a longer prefix
    assert bool((s[-1, 1, [1, 2, 6]] > s[0, 1, [1, 2, 6]]).all())


def test_sweep_sequences_repeat_exactly_the_prefix():
    from attnsae.studies.prefix_sweep import TokenClasses, copy_prefix, distinct_rows, sweep_positions
    from attnsae.studies.prefix_text import prefix_lengths

    canon = torch.arange(100)
    canon[50:] = torch.arange(50)  # ids i and i+50 are one fuzzy class
    classes = TokenClasses(canon, torch.arange(1, 100), 0)
    g = torch.Generator().manual_seed(0)
    rows = distinct_rows(5, 30, classes, g)
    assert (rows[:, 0] == 0).all()
    assert all(len(set(canon[r[1:]].tolist())) == 29 for r in rows)
    src, dest = sweep_positions(5, 30, 4, g)
    for k in range(1, 5):
        toks = copy_prefix(rows, src, dest, k)
        assert (toks[torch.arange(5), dest + 1] == toks[torch.arange(5), src]).all()
        assert prefix_lengths(toks, torch.arange(5), dest, src, canon).tolist() == [k] * 5


def test_prefix_lengths_match_fuzzily_and_stop_at_bos():
    from attnsae.studies.prefix_text import prefix_lengths

    canon = torch.tensor([0, 1, 2, 3, 4, 1])  # token 5 is a variant of token 1 (" Foo" / "foo")
    toks = torch.tensor([[0, 2, 3, 1, 4, 2, 3, 5, 4]])
    z = torch.zeros(1, dtype=torch.long)
    assert prefix_lengths(toks, z, torch.tensor([7]), torch.tensor([4]), canon).tolist() == [3]  # 2 3 1 ~ 2 3 5
    assert prefix_lengths(toks, z, torch.tensor([6]), torch.tensor([3]), canon).tolist() == [2]  # BOS stops it
    assert prefix_lengths(toks, z, torch.tensor([8]), torch.tensor([4]), canon).tolist() == [0]


def test_text_intervention_changes_exactly_token_src_minus_2():
    from attnsae.studies.prefix_sweep import TokenClasses
    from attnsae.studies.prefix_text import break_prefix, prefix_lengths

    canon = torch.arange(64)
    classes = TokenClasses(canon, torch.arange(1, 64), 0)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, 64, (4, 40), generator=g)
    tokens[:, 0] = 0
    tokens[:, 25:31] = tokens[:, 5:11]  # prefix of 5 ending at dest 29, source 10
    row = torch.tensor([0, 1, 2, 3, 3])
    dest = torch.tensor([29, 29, 29, 29, 30])
    src = torch.tensor([10, 10, 10, 10, 11])
    before = prefix_lengths(tokens, row, dest, src, canon)
    assert (before >= 2).all()
    for seed in range(5):
        mod = break_prefix(tokens, row, src, classes, torch.Generator().manual_seed(seed))
        diff = mod != tokens[row]
        expect = torch.zeros_like(diff)
        expect[torch.arange(len(row)), src - 2] = True
        assert torch.equal(diff, expect)
        assert prefix_lengths(mod, torch.arange(len(row)), dest, src, canon).tolist() == [1] * len(row)


def test_specificity_splits_firings_by_proxy():
    from attnsae.studies.specificity import followed_by, proxy_mask, repeated_prefix, specificity

    canon = torch.arange(10)
    toks = torch.tensor([[0, 4, 7, 2, 4, 9, 4, 7]])
    fb = proxy_mask(toks, followed_by({7}, canon, "7"))
    assert fb.tolist() == [[False, False, False, False, True, False, True, False]]
    rp = proxy_mask(toks, repeated_prefix(2, canon))
    assert rp[0].nonzero().squeeze(1).tolist() == [7]  # "4 7" again
    acts = torch.tensor([[5.0, 1.0, 0.0, 0.5, 2.0, 0.0, 3.0, 0.0]])
    s = specificity(acts, fb, bins=4)
    assert sum(s["count_holds"]) == 2 and sum(s["count_not"]) == 2  # BOS (5.0) left out
    assert abs(sum(s["mass_holds"]) - 5.0) < 1e-6 and abs(sum(s["mass_not"]) - 1.5) < 1e-6
    assert s["precision"] == 0.5 and s["recall"] == 1.0


def test_feature_reading_one_head_is_carried_by_it(ref_model):
    from attnsae.studies.prefix_features import feature_prefix_view
    from attnsae.studies.prefix_sweep import TokenClasses

    sae = random_sae(ref_model, 1, d_sae=8)
    with torch.no_grad():
        sae.W_enc.zero_()
        for f, h in enumerate([1, 6]):
            sae.W_enc[h * 32:(h + 1) * 32, f] = torch.randn(32)
        sae.b_enc.fill_(5.0)  # fire everywhere
    tokens = random_tokens(3, 24)
    tokens[:, 14:22] = tokens[:, 3:11]
    view = feature_prefix_view(ref_model, sae, tokens, [0, 1], TokenClasses.of(ref_model).canon, max_prefix=4,
                               progress=False)
    for f, h in ((0, 1), (1, 6)):
        r = view.summary["features"][str(f)]
        assert r["long"]["n"] > 0
        groups = [g for g in r["by_prefix"].values() if g["carrier"] is not None]
        assert groups
        for g in groups:
            assert g["carrier"] == f"L1H{h}" and abs(g["head_share"][h] - 1.0) < 1e-5
    assert view.acts.shape == (3, 24, 2) and (view.acts[:, 0] == 0).all()


def test_study_writes_its_folder(ref_model, tmp_path):
    from attnsae.corpus import load_corpus
    from attnsae.jobs.studies import run_prefix_induction

    tokens = load_corpus(ref_model.tokenizer, "stdlib", "validation", 64, max_tokens=6 * 63, progress=False).tokens
    out = tmp_path / "study"
    s = run_prefix_induction(ref_model, tokens, out, sae=random_sae(ref_model, 1, d_sae=32), n_seqs=4, seq_len=40,
                             max_prefix=3, max_pairs=40, n_specificity=1, progress=False)
    assert s["induction_heads"] == ["L1H1", "L1H2", "L1H6"]
    for name in ("summary.json", "sweep.json", "sweep.png", "text.json", "text.png", "features.json", "report.md"):
        assert (out / name).exists(), name
    assert set(s["files"]) | {".attnsae.json"} == {p.name for p in out.iterdir()}  # + the marker of its writer
    assert json.loads((out / "summary.json").read_text())["table"] == s["table"]
    assert all(h in s["table"] for h in s["studied_heads"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.mark.integration
def test_cli_study_prefix_induction_writes_its_folder(tmp_path):
    """`attnsae study prefix-induction` on the reference model (small sweep) prints the headline table naming its
    induction heads and writes the study's files."""
    from conftest import run_cli

    out = tmp_path / "pi"
    proc = run_cli("study", "prefix-induction", "--n-seqs", "8", "--max-prefix", "2", "--n-tokens", "1280",
                   "--max-pairs", "32", "--out", str(out), "--no-progress", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert all(h in proc.stdout for h in ("L1H1", "L1H2", "L1H6")), proc.stdout
    assert {"summary.json", "sweep.png", "report.md"} <= {p.name for p in out.iterdir()}
