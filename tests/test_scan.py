"""The streaming scan keeps exactly what a brute-force pass over all activations would, in state whose size does
not grow with the number of tokens."""

import math

import pytest
import torch

from attnsae.activations import harvest_z
from attnsae.errors import AttnsaeError
from attnsae.studies.scan import ScanConfig, scan_features, select_examples
from conftest import random_sae


@pytest.fixture(scope="module")
def setup(tiny_model):
    torch.manual_seed(1)
    tokens = torch.randint(1, 8192, (13, 24))
    tokens[:, 0] = 0
    sae = random_sae(tiny_model, 1, d_sae=40)
    z = harvest_z(tiny_model, tokens, [1], drop_bos=True)[1]
    acts = sae.encode(z).detach()  # [13 * 23, 40], rows in (context, position >= 1) order
    locs = (torch.arange(13)[:, None] * 24 + torch.arange(1, 24)[None]).reshape(-1)
    return tokens, sae, acts, locs


@pytest.mark.parametrize("chunk_bytes", [1, 32 * 2**20])
def test_scan_matches_brute_force(tiny_model, setup, chunk_bytes):
    tokens, sae, acts, locs = setup
    cfg = ScanConfig(n_top=5, n_sample=7, bins=8, batch_size=3, chunk_bytes=chunk_bytes)
    (st,) = scan_features(tiny_model, [sae], tokens, cfg, progress=False)
    fired = acts > 0
    assert st.n_tokens == len(acts)
    assert torch.equal(st.n_fired, fired.sum(0))
    assert torch.allclose(st.mean_act, (acts.double() * fired).sum(0) / fired.sum(0).clamp_min(1), atol=1e-5)
    for f in range(sae.cfg.d_sae):
        vals = acts[fired[:, f], f]
        top = vals.sort(descending=True).values[:5]
        n = len(top)
        assert torch.allclose(st.top_vals[f, :n], top, atol=1e-5)
        assert torch.all(st.top_vals[f, n:] == -torch.inf) and torch.all(st.top_locs[f, n:] == -1)
        row = {int(l): i for i, l in enumerate(locs)}
        for v, l in zip(st.top_vals[f, :n], st.top_locs[f, :n]):
            assert acts[row[int(l)], f] == pytest.approx(float(v), abs=1e-5)
        # exact histogram: every firing counted once, in the bin of its value at the final width
        w = float(st.hist_width[f])
        if n:
            assert vals.max() <= w * 8 and math.log2(w).is_integer()  # it fits, in power-of-two bins
            idx = torch.floor(vals.double() / w).long().clamp(0, 7)
            assert torch.equal(st.hist[f], torch.bincount(idx, minlength=8))
        else:
            assert st.hist[f].sum() == 0 and w == 0
        # the sample: real firings, as many as fit
        keep = torch.isfinite(st.sample_keys[f])
        assert int(keep.sum()) == min(7, len(vals))
        for v, l in zip(st.sample_vals[f][keep], st.sample_locs[f][keep]):
            assert acts[row[int(l)], f] == pytest.approx(float(v), abs=1e-5)
        assert len(set(st.sample_locs[f][keep].tolist())) == int(keep.sum())


def test_scan_state_does_not_grow_with_tokens(tiny_model, setup):
    """The state holds d_sae·(12·n_top + 16·n_sample + 8·bins + 24) bytes (the module docstring's bound), counted
    over every tensor the scan keeps (their whole storages, so a view into a grown buffer would count), whether it
    scanned 2 contexts or 13."""
    import dataclasses

    tokens, sae, _, _ = setup
    d = sae.cfg.d_sae
    for n_top, n_sample, bins in ((5, 7, 8), (3, 64, 40)):
        cfg = ScanConfig(n_top=n_top, n_sample=n_sample, bins=bins, batch_size=2)
        bound = d * (12 * n_top + 16 * n_sample + 8 * bins + 24)
        for t in (tokens[:2], tokens):
            (st,) = scan_features(tiny_model, [sae], t, cfg, progress=False)
            assert st.n_tokens == len(t) * (t.shape[1] - 1)
            tensors = [v for v in (getattr(st, f.name) for f in dataclasses.fields(st)) if isinstance(v, torch.Tensor)]
            storages = {x.untyped_storage().data_ptr(): x.untyped_storage().nbytes() for x in tensors}
            assert sum(storages.values()) == bound, (len(t), sum(storages.values()), bound)
            assert int(st.n_fired.sum()) > n_top * d // 4  # enough firings that an unbounded state would show


def test_select_examples_gives_top_then_descending_quantile_bands(tiny_model, setup):
    tokens, sae, acts, _ = setup
    (st,) = scan_features(tiny_model, [sae], tokens, ScanConfig(n_top=3, n_sample=64), progress=False)
    f = int((acts > 0).sum(0).argmax())
    groups = select_examples(st, f, n_bands=4, per_band=2)
    assert groups[0].title == "Top activations" and len(groups[0].vals) == 3
    assert [g.title.split()[0] for g in groups[1:]] == ["Quantile"] * (len(groups) - 1)
    assert len(groups) >= 4
    band_max = [float(g.vals.max()) for g in groups[1:]]
    assert band_max == sorted(band_max, reverse=True)
    top = set(groups[0].locs.tolist())
    assert not any(set(g.locs.tolist()) & top for g in groups[1:])


def test_scan_refuses_no_tokens(tiny_model, setup):
    _, sae, _, _ = setup
    with pytest.raises(AttnsaeError, match="nothing to scan"):
        scan_features(tiny_model, [sae], torch.zeros(0, 16, dtype=torch.long), progress=False)
