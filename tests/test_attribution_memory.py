"""DFA's memory bound: the metered workspace stays within the stated bound, and so does the process.

The bound (``attnsae.attribution.dfa`` docstring) is checked two ways: the run's own meter of every intermediate it
allocates (``workspace_bytes <= workspace_bound <= max_bytes``), and the growth of the process's peak resident memory
(``VmHWM``) while DFA runs for 8 x 256 tokens over all active features of a d_sae 16384 SAE, in a fresh process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from attnsae.attribution import attn_activations, dfa_from_activations, plan_dfa
from attnsae.errors import AttnsaeError
from attnsae.models import model_name
from attnsae.sae.model import SAE, SAEConfig

MiB = 2**20


def test_dfa_workspace_stays_within_stated_bound_and_chunking_changes_nothing(ref_model):
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=256, d_sae=512, architecture="topk", k=24, hook_name="blocks.1.attn.hook_z",
                        model_name=model_name(ref_model)))
    tokens = torch.randint(1, 8192, (2, 40))
    acts = attn_activations(ref_model, tokens, 1)
    whole = dfa_from_activations(acts, sae)
    for max_bytes in (MiB, MiB // 2):
        r = dfa_from_activations(acts, sae, max_bytes=max_bytes)
        assert r.plan["features_per_chunk"] < len(set(r.feature.tolist()))  # it really chunks
        assert r.plan["entries_per_chunk"] < len(r)
        assert 0 < r.workspace_bytes <= r.workspace_bound <= max_bytes
        assert torch.equal(r.feature, whole.feature) and torch.equal(r.dest, whole.dest)
        torch.testing.assert_close(r.by_src, whole.by_src, rtol=1e-5, atol=1e-6)


def test_dfa_refuses_a_budget_below_its_minimum():
    plan = plan_dfa(8, 256, 8, 8, 32, 16384, max_bytes=64 * MiB)
    assert plan.bound <= 64 * MiB
    with pytest.raises(AttnsaeError, match="max_bytes"):
        plan_dfa(8, 256, 8, 8, 32, 16384, max_bytes=MiB)


SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from attnsae.attribution.dfa import AttnActivations, dfa_from_activations
    from attnsae.sae.model import SAE, SAEConfig

    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024

    torch.set_num_threads(2)
    acts = AttnActivations(1, *torch.load(sys.argv[1]))
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=256, d_sae=16384, architecture="topk", k=16, hook_name="blocks.1.attn.hook_z"))
    small = AttnActivations(1, acts.v[:1, :16], acts.pattern[:1, :, :16, :16], acts.z[:1, :16])
    dfa_from_activations(small, sae, max_bytes=int(sys.argv[2]))  # warm up allocator and kernels
    before = hwm()
    r = dfa_from_activations(acts, sae, max_bytes=int(sys.argv[2]))
    out = sum(t.nbytes for t in (r.batch, r.dest, r.feature, r.act, r.pre_act, r.bias, r.by_src, r.by_head))
    print(json.dumps({"growth": hwm() - before, "entries": len(r), "output": out, "metered": r.workspace_bytes,
                      "bound": r.workspace_bound, "max_abs_err": float((r.total + r.bias - r.pre_act).abs().max())}))
""")


@pytest.mark.integration
def test_dfa_8x256_tokens_all_features_of_16384_stays_within_bound(ref_model, tmp_path):
    tokens = torch.randint(1, 8192, (8, 256), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = 0
    acts = attn_activations(ref_model, tokens, 1)
    torch.save((acts.v, acts.pattern, acts.z), tmp_path / "acts.pt")
    max_bytes = 64 * MiB
    # glibc raises its mmap threshold as large blocks are freed and then keeps freed blocks in the heap, where they
    # count as resident; a fixed threshold returns every large block on free, so VmHWM tracks live memory
    env = dict(os.environ, OMP_NUM_THREADS="2", MALLOC_MMAP_THRESHOLD_="131072")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "acts.pt"), str(max_bytes)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["entries"] == 8 * 256 * 16
    assert got["metered"] <= got["bound"] <= max_bytes
    # the process grows by at most the workspace bound + the output (+ 32 MiB for allocator slack and index
    # vectors); the materialising implementation needs B*S*S*d_in*4 = 512 MiB for its first tensor alone
    assert got["growth"] <= max_bytes + got["output"] + 32 * MiB, got
    assert got["max_abs_err"] < 1e-3
