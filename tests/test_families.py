"""Feature families: the statistics on hand-made DFA rows, and the classifier on planted features of hand-built SAEs
whose classes are known (each feature reads the value space of one head of the reference model)."""

import pytest
import torch

from attnsae.studies import families as fam
from attnsae.attribution.dfa import attn_activations
from attnsae.corpus import load_corpus
from attnsae.studies.examples import DashboardConfig, build_dashboards
from attnsae.models import model_name
from attnsae.sae.model import SAE, SAEConfig
from attnsae.studies.scan import ScanConfig


def test_canonical_ids_ignore_case_and_one_leading_space_but_not_whitespace():
    canon = fam.canonical_ids([" Foo", "foo", "FOO", "Ġfoo", "bar", " ", "  ", "\n", "fo"])
    assert canon[0] == canon[1] == canon[2] == canon[3]
    assert len({int(canon[i]) for i in (4, 5, 6, 7, 8)} | {int(canon[0])}) == 6


def _stats(by_src, toks, dest, vocab=None):
    vocab = vocab or [f"t{i}" for i in range(32)]
    return fam.example_stats(torch.tensor([by_src], dtype=torch.float), torch.tensor([toks]), torch.tensor([dest]),
                             fam.canonical_ids(vocab))


def test_example_stats_on_hand_made_dfa_rows():
    # [BOS] a b c ... a : dest 30 ("a" again); the token after the earlier "a" is position 2
    toks = [0] + list(range(1, 30)) + [1]
    row = [0.0] * 31
    row[0], row[2], row[30] = 5.0, 3.0, 1.0  # BOS 5 (excluded), induction 3, self 1
    s = _stats(row, toks, 30)
    assert s["mass"].item() == pytest.approx(4.0)
    assert s["induction"].item() == pytest.approx(0.75)
    assert s["self"].item() == pytest.approx(0.25) and s["local"].item() == pytest.approx(0.25)
    assert s["chance"].item() == pytest.approx(1 / 25)  # candidates: positions 1..25 (more than 4 back)
    assert s["bos"].item() == pytest.approx(5 / 9)
    assert s["mean_distance"].item() == pytest.approx(3 * 28 / 4)
    far = _stats([0, 2.0, 0, -7.0, 0, 0, 0, 0, 0, 0, 0] + [0] * 10 + [0.0], list(range(22)), 21)
    assert far["far"].item() == pytest.approx(1.0) and far["induction"].item() == 0  # negatives are ignored
    feat = fam.feature_stats({k: v.repeat(3) for k, v in s.items()}, torch.tensor([1.0, 2.0, 3.0]))
    assert feat["n_examples"] == 3 and feat["induction"] == pytest.approx(0.75)
    assert fam.classify(feat) == "induction"
    assert fam.classify(feat | {"n_examples": 2}) == "unclear"
    assert fam.classify(feat | {"induction": 0.2, "local": 0.7}) == "short-range"
    assert fam.classify(feat | {"induction": 0.2, "local": 0.1, "far": 0.6}) == "long-range"
    assert fam.classify(feat | {"induction": 0.2, "local": 0.3, "far": 0.3}) == "unclear"
    assert fam.classify(feat | {"chance": 0.5}) != "induction"  # no lift over chance: not induction


def _head_feature(v: torch.Tensor, head: int, d_head: int, n_heads: int) -> torch.Tensor:
    """An encoder column reading only ``head``: the mean value direction of non-BOS sources, made orthogonal to the
    BOS value, so the feature is ~ Σ_s A[t, s] (the head's attention away from BOS). v: [batch, pos, head, d_head]."""
    vh = v[:, :, head]
    mean, bos = vh[:, 1:].reshape(-1, d_head).mean(0), vh[:, 0].mean(0)
    w = mean - (mean @ bos) / (bos @ bos) * bos
    col = torch.zeros(n_heads * d_head)
    col[head * d_head:(head + 1) * d_head] = w / w.norm()
    return col


def _planted_sae(model, layer: int, heads: list[list[int]], v: torch.Tensor) -> SAE:
    c = model.cfg
    d_in = c.n_heads * c.d_head
    sae = SAE(SAEConfig(d_in=d_in, d_sae=len(heads), hook_name=f"blocks.{layer}.attn.hook_z",
                        model_name=model_name(model), layer=layer))
    with torch.no_grad():
        cols = [sum(_head_feature(v, h, c.d_head, c.n_heads) for h in hs) for hs in heads]
        sae.W_enc.copy_(torch.stack(cols, 1))
        sae.W_dec.copy_(torch.stack(cols, 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.fixture(scope="module")
def planted(ref_model):
    val = load_corpus(ref_model.tokenizer, "stdlib", "validation", 128, max_tokens=96 * 127, progress=False)
    tokens = torch.from_numpy(val.tokens)
    v0, v1 = (attn_activations(ref_model, tokens[:32], layer).v for layer in (0, 1))
    # the heads' attention profiles on validation text (non-BOS mass within 4 tokens / mean distance):
    # layer 0 heads 6 and 1 look back 1-2 tokens (local 0.89, 0.76); heads 2 and 7 look far back (mean distance 22,
    # 24 tokens; local 0.18, 0.16); layer 1 heads 1 and 2 are induction heads (induction scores 0.90, 0.89 on the
    # card) and head 3 mostly attends to the current token
    sae0 = _planted_sae(ref_model, 0, [[6], [1], [2], [7]], v0)
    sae1 = _planted_sae(ref_model, 1, [[1], [2], [3]], v1)
    cfg = DashboardConfig(scan=ScanConfig(n_top=12, batch_size=16))
    return build_dashboards(ref_model, [sae0, sae1], tokens, cfg, progress=False)


def test_planted_features_get_their_known_family(planted):
    assert planted.labels[0] == ["short-range", "short-range", "long-range", "long-range"], planted.stats[0]
    assert planted.labels[1] == ["induction", "induction", "short-range"], planted.stats[1]
    for st in planted.stats[1][:2]:
        assert st["induction"] >= 0.5 and st["induction"] >= 5 * st["chance"]


def _label_by_hand(st: dict, t: dict) -> str:
    """The module docstring's rules, written out again from the recorded numbers."""
    if st["n_examples"] < t["min_examples"]:
        return "unclear"
    if st["induction"] >= t["induction"] and st["induction"] >= t["induction_lift"] * st["chance"]:
        return "induction"
    return "short-range" if st["local"] >= t["local"] else "long-range" if st["far"] >= t["far"] else "unclear"


def test_bundle_records_the_statistics_and_thresholds_behind_each_label(planted):
    """The file a reader gets is enough to re-derive every label: the thresholds (the documented defaults) and each
    feature's statistics, which give back its label by the documented rules."""
    fams = planted.bundle["families"]
    assert fams["thresholds"] == {"induction": 0.5, "induction_lift": 5.0, "local": 0.6, "far": 0.5,
                                  "local_window": 4, "far_distance": 8, "min_examples": 3}
    for needle in ("≥50%", "≥5×", "≥60% lies within 4 tokens", "≥50% lies more than 8 tokens back", "fewer than 3"):
        assert needle in fams["criterion"], needle
    for block, labels in zip(planted.bundle["saes"], planted.labels):
        assert [f["family"] for f in block["features"]] == labels
        for f in block["features"]:
            assert set(fam.STATS) <= set(f["family_stats"])
            assert _label_by_hand(f["family_stats"], fams["thresholds"]) == f["family"], f["family_stats"]
