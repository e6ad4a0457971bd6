"""Skipping the blocks before a ``start_at_layer`` is a scoped fast path (attnsae.models.skip_blocks): the same logits
as the bridge's own ``start_at_layer`` run on every decoder family, nothing changed outside the block, a hooked block
or a deep copy runs its blocks, a disagreeing probe refuses; and ``evaluate``, whose intervened runs start at their
layer from the clean run's residual, gives the numbers of whole forwards."""

from __future__ import annotations

import contextlib
import copy
import warnings

import pytest
import torch

import tiny_archs
from attnsae.evals import loss_head
from attnsae.evals.metrics import evaluate
from attnsae.models import load_model
from attnsae.models import skip_blocks as sb
from attnsae.models.fast_attention import fused_attention
from conftest import random_sae, random_tokens

DECODERS = ("gpt2", "llama", "qwen2", "mistral", "gemma3", "gemma2", "olmo2", "gpt_neox")


@pytest.fixture(scope="module")
def archs(tmp_path_factory):
    root = tmp_path_factory.mktemp("archs")
    return {f: load_model(tiny_archs.build(f, root)) for f in DECODERS}


def resid_of(model, layer: int, tokens) -> torch.Tensor:
    box = {}

    def save(x, hook):
        box["r"] = x.detach().clone()
        return x

    model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", save)], return_type=None)
    return box["r"]


def patched(model) -> list[int]:
    return [i for i, b in enumerate(model.blocks) if "forward" in vars(b)]


@torch.no_grad()
@pytest.mark.parametrize("family", DECODERS)
def test_skipping_gives_the_bridges_start_at_layer_logits(archs, family):
    model = archs[family]
    tokens = random_tokens(n=2, pos=12, seed=1)
    full = model(tokens)
    for layer in range(1, model.cfg.n_layers):
        r = resid_of(model, layer, tokens)
        plain = model(r.clone(), start_at_layer=layer)
        with sb.skipped_blocks(model, layer) as n:
            assert n == layer and patched(model) == list(range(layer))
            skipped = model(r.clone(), start_at_layer=layer)
        assert patched(model) == []
        assert torch.equal(skipped, plain), family
        torch.testing.assert_close(skipped, full, rtol=1e-5, atol=1e-5)  # a whole forward, to rounding
        with fused_attention(model), sb.skipped_blocks(model, layer):
            torch.testing.assert_close(model(r.clone(), start_at_layer=layer), full, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_a_hooked_block_runs_and_its_hook_fires(ref_model, monkeypatch):
    tokens = random_tokens(n=2, pos=8, seed=2)
    r = resid_of(ref_model, 1, tokens)
    plain, full = ref_model(r.clone(), start_at_layer=1), ref_model(tokens)
    cls, ran = type(ref_model.blocks[0]), []
    real = cls.forward
    monkeypatch.setattr(cls, "forward", lambda self, *a, **k: (ran.append(self), real(self, *a, **k))[1])
    seen = []
    with sb.skipped_blocks(ref_model, 1) as n:
        assert n == 1
        ran.clear()  # the probe's runs, at the first entry
        ref_model(r.clone(), start_at_layer=1)
        assert ran == [ref_model.blocks[1]]  # block 0 skipped
        assert torch.equal(ref_model(tokens), full)
        assert ran[-2:] == list(ref_model.blocks)  # a run from the tokens runs every block
        ran.clear()
        with ref_model.hooks(fwd_hooks=[("blocks.0.attn.hook_z", lambda x, hook: seen.append(x.shape))]):
            out = ref_model(r.clone(), start_at_layer=1)  # a hook added inside the block: block 0 runs
        assert len(seen) == 1 and torch.equal(out, plain) and ran == list(ref_model.blocks)
        handle = ref_model.blocks[0].mlp.register_forward_pre_hook(lambda m, a: seen.append("mlp"))
        try:
            ref_model(r.clone(), start_at_layer=1)
        finally:
            handle.remove()
        assert seen[-1] == "mlp"
        ref_model(r.clone(), start_at_layer=1)
        assert len(seen) == 2  # no hook now: skipped again


@torch.no_grad()
def test_a_deep_copy_runs_its_own_blocks(ref_model):
    tokens = random_tokens(n=1, pos=8, seed=3)
    r = resid_of(ref_model, 1, tokens)
    with sb.skipped_blocks(ref_model, 1):
        twin = copy.deepcopy(ref_model)
    calls = []
    twin.blocks[0].attn.hook_z.add_hook(lambda x, hook: calls.append(1))
    twin(r.clone(), start_at_layer=1)
    assert calls == [1] and "forward" not in vars(twin.blocks[0])
    twin.reset_hooks()
    twin(tokens)
    assert "forward" not in vars(twin.blocks[0])


@torch.no_grad()
def test_a_global_hook_or_a_forward_set_by_someone_else_skips_nothing(ref_model):
    from torch.nn.modules.module import register_module_forward_hook

    handle = register_module_forward_hook(lambda m, a, out: None)
    try:
        with sb.skipped_blocks(ref_model, 1) as n:
            assert n == 0 and patched(ref_model) == []
    finally:
        handle.remove()
    theirs = ref_model.blocks[0].forward
    vars(ref_model.blocks[0])["forward"] = theirs
    try:
        with sb.skipped_blocks(ref_model, 1) as n:
            assert n == 0
        assert vars(ref_model.blocks[0])["forward"] is theirs
    finally:
        vars(ref_model.blocks[0]).pop("forward")


@torch.no_grad()
def test_train_mode_nesting_and_layer_zero_skip_nothing(ref_model):
    with sb.skipped_blocks(ref_model, 0) as n0, sb.skipped_blocks(ref_model, None) as n_none:
        assert n0 == n_none == 0
    with sb.skipped_blocks(ref_model, 1) as outer, sb.skipped_blocks(ref_model, 1) as inner:
        assert (outer, inner) == (1, 0) and patched(ref_model) == [0]
    assert patched(ref_model) == []
    ref_model.train()
    try:
        with sb.skipped_blocks(ref_model, 1) as n:
            assert n == 0 and patched(ref_model) == []
    finally:
        ref_model.eval()


@torch.no_grad()
def test_a_probe_that_disagrees_refuses_once_with_a_warning(tiny_model_dir, monkeypatch):
    model = load_model(tiny_model_dir)  # its own object: the verdict is kept per model
    monkeypatch.setattr(sb, "_pass_through", lambda self, *a, **k: None)  # a layer loop that needs a block's output
    tokens = random_tokens(n=1, pos=8, seed=4)
    r = resid_of(model, 1, tokens)
    with pytest.warns(RuntimeWarning, match="cannot be skipped"):
        with sb.skipped_blocks(model, 1) as n:
            assert n == 0 and patched(model) == []
            out = model(r.clone(), start_at_layer=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with sb.skipped_blocks(model, 1) as n:
            assert n == 0
    assert torch.equal(out, model(r.clone(), start_at_layer=1))


def skips_seen(monkeypatch) -> list[int]:
    """Each ``skipped_blocks`` a LossHead enters: how many blocks it may skip."""
    seen, real = [], loss_head.skipped_blocks

    @contextlib.contextmanager
    def spy(model, layer):
        with real(model, layer) as n:
            seen.append(n)
            yield n

    monkeypatch.setattr(loss_head, "skipped_blocks", spy)
    return seen


FIELDS = ("ce_clean", "ce_sae", "ce_zero", "ce_mean", "kl_sae", "kl_zero", "kl_mean", "explained_variance", "l0")


def assert_same_reports(fast, slow, what) -> None:
    for a, b in zip(fast.saes, slow.saes):
        for key in FIELDS:
            assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-6, abs=1e-9), (what, a.name, key)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3"])
def test_evaluate_starting_at_each_layer_equals_whole_forwards(archs, family, monkeypatch):
    """Every SAE at its own layer (one at layer 0, which runs from the tokens), batches of 3 and 1 context."""
    model = archs[family]
    tokens = random_tokens(n=4, pos=10, seed=5)
    saes = [random_sae(model, layer, seed=layer) for layer in range(model.cfg.n_layers)]
    for batch in (3, 1):
        with monkeypatch.context() as m:
            seen = skips_seen(m)
            fast = evaluate(model, saes, tokens, batch_size=batch, progress=False)
        assert set(seen) == {0, *range(1, model.cfg.n_layers)}  # the clean runs skip nothing, the others their layer
        with monkeypatch.context() as m:
            m.setattr(loss_head, "KEEP_RESIDUAL_BYTES", 0)
            assert loss_head.LossHead(model, True).to_record(tokens, [1]) is None
            seen = skips_seen(m)
            slow = evaluate(model, saes, tokens, batch_size=batch, progress=False)
        assert set(seen) == {0}
        assert_same_reports(fast, slow, family)


def test_a_layer_whose_start_differs_from_a_whole_forward_runs_whole_forwards(ref_model, monkeypatch):
    """A model whose start_at_layer run is not its whole forward (Gemma 4's per-layer inputs come from the tokens):
    simulated by a LossHead whose runs from a residual come out shifted; the check on the first batch catches it."""
    tokens = random_tokens(n=4, pos=10, seed=6)
    saes = [random_sae(ref_model, 1, seed=7)]
    slow = evaluate(ref_model, saes, tokens, batch_size=2, progress=False)
    real = loss_head.LossHead.run

    def shifted(self, inputs, start_at_layer=None, record=None):
        out = real(self, inputs, start_at_layer, record)
        return out if start_at_layer is None else out + 1e-3

    monkeypatch.setattr(loss_head.LossHead, "run", shifted)
    seen = skips_seen(monkeypatch)
    fast = evaluate(ref_model, saes, tokens, batch_size=2, progress=False)
    assert seen.count(1) == 1  # the check's one run started at layer 1; every intervened run started from the tokens
    assert_same_reports(fast, slow, "shifted")
