import numpy as np
import pytest
import torch

from attnsae.activations import (
    CachedActivations,
    ModelActivations,
    StreamConfig,
    harvest_z,
    read_manifest,
    write_cache,
)
from attnsae.errors import AttnsaeError


@pytest.fixture(scope="module")
def contexts():
    g = np.random.default_rng(0)
    t = g.integers(1, 8192, size=(40, 16))
    t[:, 0] = 0
    return t


def test_harvest_z_matches_run_with_cache_and_stops_early(tiny_model, contexts):
    """harvest_z runs the fused attention (:mod:`attnsae.models.fast_attention`, nothing reads the pattern) and gives the
    hook_z of the bridge's own attention (run_with_cache hooks the pattern, so it takes the bridge's path) to fp32
    rounding; with hooks on the patterns, harvest_z gives exactly the bridge's."""
    from attnsae.models import fast_attention

    tokens = torch.from_numpy(contexts[:3])
    fused = []
    real = fast_attention.F.scaled_dot_product_attention

    def counted(*a, **k):
        fused.append(1)
        return real(*a, **k)

    harvest_z(tiny_model, tokens, [1])  # the first entry probes each layer once (that verdict is kept)
    fast_attention.F.scaled_dot_product_attention = counted
    try:
        harvest_z(tiny_model, tokens, [1])
    finally:
        fast_attention.F.scaled_dot_product_attention = real
    assert len(fused) == 2  # both layers' attention of the real forward took the fused path
    _, cache = tiny_model.run_with_cache(tokens)
    for layers in ([0], [1], [0, 1]):
        out = harvest_z(tiny_model, tokens, layers, drop_bos=True)
        for l in layers:
            ref = cache[f"blocks.{l}.attn.hook_z"][:, 1:].reshape(-1, 32)
            torch.testing.assert_close(out[l], ref, rtol=1e-5, atol=1e-6)
    fused = harvest_z(tiny_model, tokens, [1])[1]
    calls = []
    hooks = [b.attn.hook_pattern.register_forward_hook(lambda *a: calls.append(1)) for b in tiny_model.blocks]
    try:  # hooks on the patterns: the bridge's own attention, which fills them
        hooked = harvest_z(tiny_model, tokens, [1])[1]
    finally:
        for h in hooks:
            h.remove()
    assert len(calls) == 2 and torch.equal(hooked, cache["blocks.1.attn.hook_z"].reshape(-1, 32))
    torch.testing.assert_close(fused, hooked, rtol=1e-5, atol=1e-6)
    full = harvest_z(tiny_model, tokens, [0], drop_bos=False)[0]
    assert full.shape == (3 * 16, 32)


def test_model_stream_is_a_function_of_batch_index(tiny_model, contexts):
    """Batch i is a function of (seed, i); the shuffle buffer serves each chunk's activations as a permutation (every
    row once) of its contexts' rows, mixed across contexts and positions."""
    from attnsae.activations import context_order

    cfg = StreamConfig(layers=[0, 1], batch_size=39, buffer_size=200, seed=3)
    src = ModelActivations(tiny_model, contexts, cfg)  # 13 contexts of 15 rows per chunk: 5 batches of 39
    it = src.batches(0)
    first = [next(it) for _ in range(12)]
    assert first[0][0].shape == (39, 32)
    for i, b in zip(range(5), src.batches(7)):
        for l in (0, 1):
            assert torch.equal(b[l], first[7 + i][l])
    # where every served row comes from: (context, position) of the model's own rows, found by exact match
    direct = {l: harvest_z(tiny_model, torch.from_numpy(contexts), [l], drop_bos=True)[l] for l in (0, 1)}
    assert len(torch.unique(direct[0], dim=0)) == 40 * 15

    def origin(rows, l):
        match = (rows[:, None, :] == direct[l][None]).all(-1)  # [batch, 600]
        assert (match.sum(1) == 1).all()  # each served row is exactly one of the model's rows
        return match.int().argmax(1)  # flat index context * 15 + (position - 1)

    for c in range(2):
        chunk = [first[5 * c + b] for b in range(5)]
        src_rows = torch.cat([origin(b[0], 0) for b in chunk])
        assert torch.equal(src_rows, torch.cat([origin(b[1], 1) for b in chunk]))  # layers stay aligned row by row
        ctx_ids = context_order(40, 3, 0)[13 * c:13 * (c + 1)]
        want = torch.from_numpy(np.sort((ctx_ids[:, None] * 15 + np.arange(15)[None]).reshape(-1)))
        assert torch.equal(src_rows.sort().values, want)  # a permutation of the chunk's 195 rows: none twice
        for b in chunk:  # every batch mixes many contexts and positions, in no (context, position) order
            rows = origin(b[0], 0)
            ctx, pos = rows // 15, rows % 15
            assert len(ctx.unique()) >= 9 and len(pos.unique()) >= 9
            assert (ctx[1:] == ctx[:-1]).float().mean() < 0.25
            assert abs(np.corrcoef(np.arange(39), rows.numpy())[0, 1]) < 0.5
    assert set(context_order(40, 3, 0)[:13].tolist()) != set(range(13))  # contexts are read in a shuffled order


def test_cache_round_trip_and_refusals(tiny_model, contexts, tmp_path):
    man = write_cache(tiny_model, contexts, tmp_path / "c", [0, 1], model_name="tiny", corpus="rand",
                      split="train", shard_tokens=100, progress=False)
    assert man.n_tokens == 40 * 15 and len(man.shards) > 1
    assert read_manifest(tmp_path / "c").layers == [0, 1]
    src = CachedActivations(tmp_path / "c", [1], batch_size=40, seed=0)
    b = next(src.batches(0))[1]
    direct = harvest_z(tiny_model, torch.from_numpy(contexts), [1], drop_bos=True)[1]
    # every cached row is one of the model's rows, bit for bit
    match = (b[:, None, :] == direct[None]).all(-1).any(-1)
    assert match.all()
    with pytest.raises(AttnsaeError, match="for model 'tiny'"):
        CachedActivations(tmp_path / "c", [0], model_name="other")
    with pytest.raises(AttnsaeError, match="not \\[3\\]"):
        CachedActivations(tmp_path / "c", [3])
    with pytest.raises(AttnsaeError, match="d_in 32, but the SAE expects d_in 64"):
        CachedActivations(tmp_path / "c", [0], d_in=64, batch_size=10)
    shard = tmp_path / "c" / "layer0" / "shard00000.npy"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(AttnsaeError, match="activation shard"):
        CachedActivations(tmp_path / "c", [0], batch_size=10)


def test_bf16_cache_stores_bf16_values(tiny_model, contexts, tmp_path):
    write_cache(tiny_model, contexts[:8], tmp_path / "c", [0], model_name="tiny", corpus="r", split="train",
                dtype="bfloat16", progress=False)
    src = CachedActivations(tmp_path / "c", [0], batch_size=8 * 15)
    b = next(src.batches(0))[0]
    direct = harvest_z(tiny_model, torch.from_numpy(contexts[:8]), [0], drop_bos=True)[0]
    assert torch.allclose(b.sort(0).values, direct.to(torch.bfloat16).float().sort(0).values)


def test_cache_into_nonempty_folder_is_refused(tiny_model, contexts, tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(AttnsaeError, match="not empty"):
        write_cache(tiny_model, contexts, tmp_path, [0], model_name="t", corpus="r", split="train", progress=False)
