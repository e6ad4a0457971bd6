"""Exactness of every stage on one model: each stage against a direct computation, or its one-line refusal.

:func:`check_stages` runs every stage of :data:`attnsae.models.architecture.STAGES` on a small batch of random tokens
(BOS at position 0) with a random SAE on ``blocks.{layer}.attn.hook_z``, and compares what the stage returns with a
computation written here from the model's hooks and weights alone (not from the stage's code). For each stage
``describe(model).refusal(stage, layer)`` says what to expect:

* ``None``: the stage must run and agree with the direct computation within the model's rounding (relative error at
  most 1e-4 in float32, 3e-2 in half precision): verdict ``"exact"``, with the measured max relative error;
* a reason: the stage must raise :class:`AttnsaeError` with exactly that one-line message (evaluate instead returns
  NaN CE and KL with the reason in ``EvalReport.ce_refused``): verdict ``"refused"``, with the reason.

Anything else is a ``"mismatch"``: numbers beyond the tolerance, a refused stage that runs anyway (plausible numbers
that are wrong), a refusal with another message, or a crash. The direct computations (``B`` contexts of ``S`` tokens,
``F`` SAE features, ``L`` the layer, ``c`` the direct path of the final norm):

* **harvest**: ``harvest_z(model, tokens, layers)`` == ``hook_z`` of ``model.run_with_cache`` as [B·S, d_in], every
  layer at once;
* **train**: the first batch a :class:`~attnsae.activations.ModelActivations` stream serves is made of rows of the
  harvested ``hook_z`` (BOS dropped); a fresh SAE trained a few steps on the stream keeps a finite loss;
* **eval_reconstruction**: ``evaluate``'s explained variance and L0 == those of ``x_hat = relu((z − b_dec) W_enc +
  b_enc) W_dec + b_dec`` over positions 1.. (explained variance relative to the whole variance, 1);
* **eval_ce**: ``ce_clean`` == the mean of ``−log_softmax(logits)[t, tok[t+1]]``, and ``ce_sae`` == the same with
  ``hook_z[:, 1:]`` replaced by ``x_hat`` through a hook written here;
* **dfa**: ``by_src.sum(-1) + bias == pre_act == by_head.sum(-1) + bias``, ``pre_act == (z − b_dec) W_enc + b_enc``
  and ``by_src[t, s] == Σ_h A_h[t, s] (v_{kv(h)}[s] · W_enc[h])`` from ``hook_pattern`` and ``hook_v``; on an encoder
  some source after its destination must carry DFA mass;
* **rdfa**: the tree of the top feature at the last position of the first context (an upstream SAE on layer 0)
  closes, and its root equals the direct pre-activation;
* **logit_effect**: with both norm scales frozen at every position ``t``, the direct path of ``hook_attn_out[L][t]``
  through the final norm, ``c(attn_out[t]) / σ_final[t] @ W_U`` with ``c(x) = γ_final ⊙ centre(x)`` (centring for a
  LayerNorm only), equals ``Σ_i f_i[t] · M[i] / (σ_post[t] σ_final[t])`` with ``M =
  logit_effect_matrix(...)`` plus the direct path of the terms that are no feature:
  ``b_dec W_O``, the SAE error ``(z − x_hat) W_O`` and ``b_O`` through the post-attention norm (``γ_post ⊙
  centre(·) / σ_post``; identity without one), and the post-norm's ``β``;
* **families**: :func:`attnsae.studies.families.example_stats` on the DFA runs, gives finite statistics, and its
  mass equals the positive direct DFA mass over the sources it counts (``s >= 1``, and ``s <= t`` when causal).
"""

from __future__ import annotations

import functools
import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from attnsae.models.architecture import STAGES, Architecture, describe, norm_weights
from attnsae.errors import AttnsaeError

STATUSES = ("exact", "refused", "mismatch")
BATCH, POS = 3, 24  # contexts and tokens per context (longer than the tiny models' sliding windows)
D_SAE = 64
TRAIN_STEPS, TRAIN_BATCH = 5, 16


@dataclass
class StageCheck:
    """One stage's verdict on one model.

    ``detail``: for ``"exact"`` the measured max relative error (and notes), for ``"refused"`` the architecture's
    one-line reason, for ``"mismatch"`` what disagreed. ``error``: the max relative error (``None`` unless measured).
    """

    stage: str
    status: str  # one of STATUSES
    detail: str
    error: float | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class _Mismatch(Exception):
    """A stage ran but broke its contract in a way a tolerance cannot express."""


# ----------------------------------------------------------------------------------------------- the run


def check_stages(model, layer: int | None = None, seed: int = 0) -> list[StageCheck]:
    """Every stage of :data:`~attnsae.models.architecture.STAGES` on ``model`` at ``layer`` (default: the last), in
    order.

    See the module docstring for each stage's direct computation. Never raises for a stage's failure: that is a
    ``"mismatch"`` verdict.
    """
    run = _Run(model, layer, seed)
    return [run.check(stage) for stage in STAGES]


def tolerance(model) -> float:
    """The largest relative error an exact stage may show: the model's own rounding (1e-4 in float32, 3e-2 in
    half precision)."""
    return 1e-4 if next(model.parameters()).dtype in (torch.float32, torch.float64) else 3e-2


def random_tokens(model, batch: int = BATCH, pos: int = POS, seed: int = 0) -> Tensor:
    """int64 [batch, pos]: ids drawn from ``[100, min(d_vocab, len(tokenizer)))``, BOS at position 0."""
    from attnsae.corpus import bos_token_id

    hi = min(int(model.cfg.d_vocab), len(model.tokenizer))
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(min(100, hi - 1), hi, (batch, pos), generator=g)
    tokens[:, 0] = bos_token_id(model.tokenizer)
    return tokens


def random_sae(model, layer: int, seed: int = 0, d_sae: int = D_SAE):
    """A random ReLU SAE on ``blocks.{layer}.attn.hook_z`` of ``model`` with biases drawn away from 0 (std 0.3)."""
    from attnsae.models import model_name
    from attnsae.sae.model import SAE, SAEConfig

    c = model.cfg
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_in=int(c.n_heads * c.d_head), d_sae=d_sae, hook_name=f"blocks.{layer}.attn.hook_z",
                        model_name=model_name(model)))
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3)
        sae.b_enc.normal_(0, 0.3)
    return sae


def _rel(a: Tensor | float, b: Tensor | float, floor: float = 1e-12) -> float:
    """``max|a − b| / max(max|b|, floor)``."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape:
        raise _Mismatch(f"shape {tuple(a.shape)} where the direct computation has {tuple(b.shape)}")
    if not bool(torch.isfinite(a).all()):
        raise _Mismatch("non-finite values")
    return float((a - b).abs().max()) / max(float(b.abs().max()), floor) if a.numel() else 0.0


class _Run:
    """One model, one layer, one token batch, one random SAE; the clean forward pass every direct check reads."""

    def __init__(self, model, layer: int | None, seed: int) -> None:
        self.model, self.seed = model, seed
        n = int(model.cfg.n_layers)
        self.layer = n - 1 if layer is None else layer
        if not 0 <= self.layer < n:
            raise AttnsaeError(f"layer {self.layer} is out of range: the model has layers 0..{n - 1}")
        self.arch: Architecture = describe(model)
        self.tol = tolerance(model)
        self.tokens = random_tokens(model, seed=seed)  # [B, S]
        self.sae = random_sae(model, self.layer, seed)
        with torch.no_grad():
            logits, cache = model.run_with_cache(self.tokens.to(next(model.parameters()).device))
        self.logits = logits.detach().double().cpu()  # [B, S, d_vocab]
        self.cache = {k: v.detach().double().cpu() for k, v in cache.items()}

    # ------------------------------------------------------------------------------------------- verdicts

    def check(self, stage: str) -> StageCheck:
        why = self.arch.refusal(stage, self.layer)
        try:
            err, note = STAGE_CHECKS[stage](self)
        except AttnsaeError as e:
            msg = str(e)
            if why is None:
                return StageCheck(stage, "mismatch", f"refused although the architecture says exact: {msg}")
            if msg != why:
                return StageCheck(stage, "mismatch", f"refused with another reason: {msg!r}; expected {why!r}")
            return StageCheck(stage, "refused", why)
        except _Mismatch as e:
            return StageCheck(stage, "mismatch", str(e))
        except Exception as e:  # noqa: BLE001 - a crash is a verdict, not a failure of the check
            first = str(e).splitlines()[0] if str(e) else ""
            return StageCheck(stage, "mismatch", f"crashed: {type(e).__name__}: {first}")
        if why is not None:
            return StageCheck(stage, "mismatch", f"ran (max relative error {err:.1e}) although refused: {why}", err)
        if not err <= self.tol:
            return StageCheck(stage, "mismatch", f"max relative error {err:.1e} exceeds {self.tol:g}{note}", err)
        return StageCheck(stage, "exact", f"max relative error {err:.1e}{note}", err)

    # ------------------------------------------------------------------------------------------- direct quantities

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.tokens.shape)

    def z(self, layer: int) -> Tensor:
        """``hook_z`` of ``layer`` with heads concatenated: float64 [B, S, d_in]."""
        B, S = self.shape
        return self.cache[f"blocks.{layer}.attn.hook_z"].reshape(B, S, -1)

    def sae_weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(W_enc [d_in, F], b_enc [F], W_dec [F, d_in], b_dec [d_in]), float64."""
        s = self.sae
        return tuple(p.detach().double().cpu() for p in (s.W_enc, s.b_enc, s.W_dec, s.b_dec))

    @functools.cached_property
    def pre(self) -> Tensor:
        """``(z − b_dec) W_enc + b_enc``: float64 [B, S, F]."""
        W_enc, b_enc, _, b_dec = self.sae_weights()
        return (self.z(self.layer) - b_dec) @ W_enc + b_enc

    @functools.cached_property
    def acts(self) -> Tensor:
        """ReLU feature activations: float64 [B, S, F]."""
        return self.pre.clamp_min(0)

    @functools.cached_property
    def x_hat(self) -> Tensor:
        """``f W_dec + b_dec``: float64 [B, S, d_in]."""
        _, _, W_dec, b_dec = self.sae_weights()
        return self.acts @ W_dec + b_dec

    @functools.cached_property
    def by_src(self) -> Tensor:
        """``Σ_h A_h[t, s] (v_{kv(h)}[s] · W_enc[h])``: float64 [B, dest, src, F]."""
        B, S = self.shape
        L, H, dh = self.layer, int(self.model.cfg.n_heads), int(self.model.cfg.d_head)
        A = self.cache[f"blocks.{L}.attn.hook_pattern"]  # [B, H, dest, src]
        v = self.cache[f"blocks.{L}.attn.hook_v"].reshape(B, S, -1, dh)  # [B, src, G, d_head]
        v = v[:, :, torch.arange(H) // (H // v.shape[2])]  # query head h reads value head h // (H / G)
        W = self.sae_weights()[0].reshape(H, dh, -1)  # [H, d_head, F]
        return torch.einsum("bhts,bshd,hdf->btsf", A, v, W)

    # evaluate once for both eval stages, DFA once for dfa and families

    @functools.cached_property
    def evaluation(self):
        from attnsae.evals.metrics import evaluate

        return evaluate(self.model, self.sae, self.tokens, batch_size=BATCH, progress=False)

    @functools.cached_property
    def dfa_result(self):
        from attnsae.attribution.dfa import dfa

        return dfa(self.model, self.sae, self.tokens, features=list(range(self.sae.cfg.d_sae)))


# ----------------------------------------------------------------------------------------------- stages
# Each takes the run and returns (max relative error, note for the detail); refusals propagate as AttnsaeError.


def _harvest(r: _Run) -> tuple[float, str]:
    from attnsae.activations import harvest_z

    B, S = r.shape
    layers = list(range(r.layer + 1))
    got = harvest_z(r.model, r.tokens, layers)
    return max(_rel(got[l].cpu(), r.z(l).reshape(B * S, -1)) for l in layers), ""


def _train(r: _Run) -> tuple[float, str]:
    from attnsae.activations import ModelActivations, StreamConfig
    from attnsae.models import model_name
    from attnsae.training.config import SAESpec, TrainConfig
    from attnsae.training.trainer import fit

    B, S = r.shape
    rows = r.z(r.layer)[:, 1:].reshape(B * (S - 1), -1)  # what the stream must serve: hook_z, BOS dropped
    stream = ModelActivations(r.model, r.tokens.numpy(), StreamConfig(
        layers=[r.layer], batch_size=TRAIN_BATCH, buffer_size=B * (S - 1), model_batch_size=B, seed=r.seed))
    first = next(stream.batches())[r.layer].double()  # [TRAIN_BATCH, d_in]
    err = float(torch.cdist(first, rows).min(1).values.max()) / max(float(rows.abs().max()), 1e-12)
    cfg = TrainConfig(total_tokens=TRAIN_STEPS * TRAIN_BATCH, batch_size=TRAIN_BATCH, lr=1e-3, warmup_steps=0,
                      log_every=1, ckpt_every=10**6, resample_every=10**9, layers=[r.layer], progress=False,
                      seed=r.seed)
    spec = SAESpec(layer=r.layer, d_sae=D_SAE, l1_coeff=1e-3)
    with tempfile.TemporaryDirectory() as out:
        fit(cfg, [spec], stream, out, sae_meta={"model_name": model_name(r.model)})
        with open(f"{out}/metrics.jsonl") as fh:
            losses = [json.loads(line)["loss"] for line in fh if line.strip()]
    if len(losses) != TRAIN_STEPS or not all(math.isfinite(x) for x in losses):
        raise _Mismatch(f"training logged losses {losses} (expected {TRAIN_STEPS} finite values)")
    return err, f"; loss {losses[0]:.4g} -> {losses[-1]:.4g} over {TRAIN_STEPS} steps"


def _eval_reconstruction(r: _Run) -> tuple[float, str]:
    s = r.evaluation.saes[0]
    x, x_hat = r.z(r.layer)[:, 1:], r.x_hat[:, 1:]  # keep_bos: position 0 is left out
    sst = (x - x.reshape(-1, x.shape[-1]).mean(0)).pow(2).sum()
    ev = 1 - float((x - x_hat).pow(2).sum() / sst)
    l0 = float((r.acts[:, 1:] > 0).sum(-1).double().mean())
    return max(_rel(s.explained_variance, ev, floor=1.0), _rel(s.l0, l0)), ""


def _eval_ce(r: _Run) -> tuple[float, str]:
    report = r.evaluation
    s = report.saes[0]
    ce_fields = ("ce_clean", "ce_sae", "ce_zero", "ce_mean", "kl_sae", "kl_zero", "kl_mean")
    reason = getattr(report, "ce_refused", None)
    if reason:
        finite = [f for f in ce_fields if math.isfinite(getattr(s, f))]
        if finite:
            raise _Mismatch(f"CE refused ({reason}) but {', '.join(finite)} still reported")
        raise AttnsaeError(reason)  # compared with the architecture's reason like any refusal
    L = r.layer

    def splice(z: Tensor, hook) -> Tensor:
        out = z.clone()
        out[:, 1:] = r.x_hat[:, 1:].reshape(out[:, 1:].shape).to(z.dtype).to(z.device)
        return out

    with torch.no_grad():
        spliced = r.model.run_with_hooks(r.tokens.to(next(r.model.parameters()).device),
                                         fwd_hooks=[(f"blocks.{L}.attn.hook_z", splice)])
    err = max(_rel(s.ce_clean, _next_token_ce(r.logits, r.tokens)),
              _rel(s.ce_sae, _next_token_ce(spliced.detach().double().cpu(), r.tokens)))
    return err, ""


def _next_token_ce(logits: Tensor, tokens: Tensor) -> float:
    """Mean ``−log_softmax(logits[:, t])[tokens[:, t+1]]`` over t < S − 1 (logits [B, S, V], tokens [B, S])."""
    logp = torch.log_softmax(logits[:, :-1].double(), -1)
    return float(-logp.gather(-1, tokens[:, 1:, None]).mean())


def _dfa(r: _Run) -> tuple[float, str]:
    res = r.dfa_result
    S = r.shape[1]
    pre = r.pre[res.batch, res.dest, res.feature]
    by_src = r.by_src[res.batch, res.dest, :, res.feature]  # [E, S]
    err = max(_rel(res.by_src.sum(-1) + res.bias, res.pre_act), _rel(res.by_head.sum(-1) + res.bias, res.pre_act),
              _rel(res.pre_act, pre), _rel(res.by_src, by_src))
    note = ""
    if not r.arch.causal:
        later = torch.arange(S)[None] > res.dest[:, None]
        if not bool((res.by_src[later] != 0).any()):
            raise _Mismatch("an encoder's DFA puts no mass on any source after its destination")
        share = float(res.by_src.abs()[later].sum() / res.by_src.abs().sum())
        note = f"; {share:.0%} of |DFA| on sources after the destination"
    return err, note


def _rdfa(r: _Run) -> tuple[float, str]:
    from attnsae.attribution.rdfa import rdfa

    pos = r.shape[1] - 1
    feature = int(r.pre[0, pos].argmax())
    ups = [random_sae(r.model, 0, r.seed + 1)] if r.layer > 0 else []
    res = rdfa(r.model, r.sae, r.tokens[0], feature, position=pos, depth=2, top_k=3, upstream_saes=ups)
    root = _rel(res.root.value, r.pre[0, pos, feature], floor=float(r.pre[0, pos].abs().max()))
    return max(res.max_relative_residual(), root), f"; {sum(1 for _ in res.root.walk())} nodes"


def _logit_effect(r: _Run) -> tuple[float, str]:
    from attnsae.attribution.logits import logit_effect_matrix

    model, L, arch = r.model, r.layer, r.arch
    M = logit_effect_matrix(model, r.sae, list(range(r.sae.cfg.d_sae))).double()  # [F, V]
    d = int(model.cfg.d_model)
    W_U = model.W_U.detach().double().cpu()  # [d_model, V]
    attn = model.blocks[L].attn
    W_O = attn.W_O.detach().double().cpu().reshape(-1, d)  # [d_in, d_model]
    b_O = getattr(attn, "b_O", None)
    b_O = torch.zeros(d, dtype=torch.float64) if b_O is None else b_O.detach().double().cpu()
    final, post = arch.final_norm, arch.blocks[L].attn_out
    if final is None:
        raise _Mismatch("logit effects ran, but the probe found no final norm to read through")
    g_final = norm_weights(model.ln_final, final, d)[0].double()
    s_final = r.cache["ln_final.hook_scale"]  # [B, S, 1]

    def centre(x: Tensor, kind: str) -> Tensor:
        return x - x.mean(-1, keepdim=True) if kind == "LN" else x

    def read(x: Tensor) -> Tensor:  # [..., d_model] -> [..., V]: the final norm's frozen direct path, without 1/σ
        return (centre(x, final.kind) * g_final) @ W_U

    if post is None:
        g_post, beta_post, s_post = torch.ones(d), torch.zeros(d), torch.ones(1)
    else:
        g_post, beta_post = norm_weights(model.blocks[L].ln1_post, post, d)
        s_post = r.cache[f"blocks.{L}.ln1_post.hook_scale"]  # [B, S, 1]
    g_post, beta_post = g_post.double(), beta_post.double()

    def through_post(y: Tensor) -> Tensor:  # [..., d_model]: the post-attention norm without 1/σ (or nothing)
        return y if post is None else centre(y, post.kind) * g_post

    b_dec = r.sae_weights()[3]
    z = r.z(L)
    rest = (b_dec + (z - r.x_hat)) @ W_O + b_O  # b_dec, the SAE error and b_O: [B, S, d_model]
    direct = read(r.cache[f"blocks.{L}.hook_attn_out"]) / s_final  # [B, S, V]
    decomposed = (r.acts @ M + read(through_post(rest))) / (s_post * s_final) + read(beta_post) / s_final
    return _rel(decomposed, direct), ""


def _families(r: _Run) -> tuple[float, str]:
    from attnsae.studies import families as fam
    from attnsae.studies.examples import vocab_strings

    res = r.dfa_result
    S = r.shape[1]
    canon = fam.canonical_ids(vocab_strings(r.model))
    stats = fam.example_stats(res.by_src, r.tokens[res.batch], res.dest, canon, causal=r.arch.causal)
    bad = [k for k, v in stats.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise _Mismatch(f"non-finite family statistics: {', '.join(bad)}")
    src = torch.arange(S)[None]
    counted = (src >= 1) & ((src <= res.dest[:, None]) if r.arch.causal else True)
    mass = (r.by_src[res.batch, res.dest, :, res.feature].clamp_min(0) * counted).sum(1)
    return _rel(stats["mass"], mass), ""


def _graph(r: _Run) -> tuple[float, str]:
    """The graph of the top prediction on one context, heads everywhere but the SAE's layer: it closes, its target is
    the model's logit, its parts sum to the target, and removing nodes from the frozen model moves the target by
    their effects (a forward pass, not the edges)."""
    from attnsae.graph.build import build_from
    from attnsae.graph.frozen import FrozenPrompt, measured_removals
    from attnsae.graph.target import TargetSpec, resolve

    fp = FrozenPrompt(r.model, {r.layer: r.sae}, r.tokens[0])
    tgt = resolve(TargetSpec(), fp, r.model.tokenizer)
    g = build_from(r.model, fp, tgt, progress=False)
    d = g.decomposition()
    logit = r.logits[0, -1].max()
    errs = [g.closure, _rel(tgt.value, logit), _rel(sum(v for k, v in d.items() if k != "total"), d["total"])]
    base = float(tgt.frozen_value(fp))
    for i, real in measured_removals(fp, tgt, g, ("token", "feature", "head", "error", "mlp")):
        errs.append(_rel(real, g.effect[i], floor=abs(base)))
    return max(errs), f"; {g.n_nodes} nodes, {g.n_edges} edges"


STAGE_CHECKS: dict[str, Callable[[_Run], tuple[float, str]]] = {
    "harvest": _harvest, "train": _train, "eval_reconstruction": _eval_reconstruction, "eval_ce": _eval_ce,
    "dfa": _dfa, "rdfa": _rdfa, "logit_effect": _logit_effect, "families": _families, "graph": _graph,
}
assert tuple(STAGE_CHECKS) == STAGES, "every stage of attnsae.models.architecture.STAGES needs its direct check"

__all__ = ["STAGE_CHECKS", "STATUSES", "StageCheck", "check_stages", "random_sae", "random_tokens", "tolerance"]
