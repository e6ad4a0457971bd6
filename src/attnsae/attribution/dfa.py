"""Direct feature attribution (DFA): a feature's pre-activation split by source position and by head.

Algebra (per batch row; ``w_i = W_enc[:, i]`` split into per-head chunks ``w_{i,h}`` [d_head]):

    z_h[t]       = Σ_s A_h[t, s] v_{kv(h)}[s]                    (v includes b_V; softmax rows sum to 1)
    w_iᵀ z_cat[t] = Σ_h w_{i,h}ᵀ z_h[t] = Σ_s Σ_h DFA_i(t, s, h)
    DFA_i(t,s,h) = A_h[t, s] · (w_{i,h}ᵀ v_{kv(h)}[s])
    pre_i[t]     = w_iᵀ z_cat[t] + bias_i
    bias_i       = b_enc[i] − b_dec · w_i                        (b_enc[i] alone without apply_b_dec_to_input)

so ``by_src.sum(-1) + bias == pre_act`` and ``by_head.sum(-1) + bias == pre_act`` for every entry, exactly up to fp32
rounding. Grouped-query attention needs nothing special: query head ``h`` reads value head ``kv(h)``.

Memory. The public dashboard code materialises ``[batch, dest, src, d_in]``; here values are projected onto the
encoder first, ``vproj[h, f, b, s] = v[b, s, kv(h)] · w_{f,h}`` for a chunk of ``C`` features, and each requested
entry ``(b, t, f)`` then reads ``A[b, :, t, :] ⊙ vproj[:, f, b, :]`` ([n_heads, src]) in chunks of ``E_c`` entries.
The requested entries are the output: "all active features" gives a sparse list of ``(batch, dest, feature)`` entries,
each with its ``[src]`` and ``[head]`` vectors. With 4-byte floats, ``N = B·S`` tokens, ``H`` query heads,
``G`` value heads, ``d_in = H·d_head``:

    stage 1 (find entries, rows of z in chunks of r):  r · (d_in + 4·d_sae) · 4
             (z rows; pre-activations, activations, the activation's scratch and the firing mask per row)
    stage 2 (project + read entries):                  N·G·d_head·4 + C·(2·d_in + N·H)·4 + E_c·((3H + 1)·S + H)·4
             (v regrouped by value head; encoder columns, their regrouped copy and vproj per feature;
              the pattern rows, vproj rows, their product and its two sums per entry)

:func:`plan_dfa` picks the largest ``r``, ``C``, ``E_c`` (``E_c`` at most 1024, for cache locality) with each stage
at most ``max_bytes`` (the projection gets up to half of it) and states the bound for those chunks. The run meters
the bytes of every intermediate it allocates and reports the largest live set: ``DFAResult.workspace_bytes <=
workspace_bound <= max_bytes``. Not counted: the captured activations (``v``, ``pattern``, ``z``: the forward pass's
own tensors) and the output, ``E · (S + H + 6) · 4`` bytes (refused beyond ``max_output_bytes``). The materialising
implementation needs ``B·S²·d_in·4`` bytes for its first tensor (512 MiB for 8 x 256 tokens and d_in 256).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from attnsae.attribution.inputs import check_features, tokenize
from attnsae.errors import AttnsaeError
from attnsae.models import check_tokens
from attnsae.models.architecture import require
from attnsae.models.hooks import attention_mask, capture, kv_of_head
from attnsae.sae.checks import check_sae, cpu_sae
from attnsae.sae.model import SAE

ITEM = 4  # bytes per float32
DEFAULT_MAX_BYTES = 64 * 2**20
ENTRY_CHUNK = 1024  # at most this many entries per chunk, whatever the budget: small chunks stay in cache
DEFAULT_MAX_OUTPUT_BYTES = 2 * 2**30


# ----------------------------------------------------------------------------------------------- inputs


@dataclass
class AttnActivations:
    """One layer's attention, as DFA reads it (float32).

    v: ``blocks.{L}.attn.hook_v`` [batch, src, n_kv_heads, d_head]; pattern: ``hook_pattern`` [batch, head, dest,
    src]; z: ``hook_z`` [batch, dest, head, d_head].
    """

    layer: int
    v: Tensor
    pattern: Tensor
    z: Tensor

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """(batch, pos, n_heads, n_kv_heads, d_head)."""
        B, S, G, dh = self.v.shape
        return B, S, self.pattern.shape[1], G, dh

    @property
    def nbytes(self) -> int:
        return self.v.nbytes + self.pattern.nbytes + self.z.nbytes


def hook_names(layer: int) -> list[str]:
    return [f"blocks.{layer}.attn.hook_v", f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.attn.hook_z"]


def attn_activations(model, tokens: Tensor, layer: int, lengths: Tensor | None = None) -> AttnActivations:
    """Run the model up to block ``layer`` and capture its ``hook_v``, ``hook_pattern``, ``hook_z`` (an encoder's
    padding past ``lengths`` [batch] masked out)."""
    c = capture(model, tokens, hook_names(layer), stop_at_layer=layer + 1,
                attention_mask=attention_mask(model, tokens, lengths))
    return from_cache(c, layer)


def from_cache(cache, layer: int) -> AttnActivations:
    """:class:`AttnActivations` from any mapping of hook names (e.g. an ``ActivationCache``)."""
    v, pattern, z = (cache[n].detach().float().cpu() for n in hook_names(layer))
    if z.ndim == 3:  # some bridges give z as [batch, pos, d_in]
        z = z.reshape(*z.shape[:2], pattern.shape[1], -1)
    return AttnActivations(layer, v, pattern, z)


# ----------------------------------------------------------------------------------------------- plan


@dataclass
class DFAPlan:
    """Chunk sizes for one DFA run and the workspace bound (bytes) they give."""

    rows_per_chunk: int  # stage 1: rows of z encoded at once
    features_per_chunk: int  # stage 2: features projected at once (C)
    entries_per_chunk: int  # stage 2: entries read at once (E_c)
    bound: int  # bytes: max(stage 1, stage 2) from the module docstring, for these chunk sizes
    sizes: tuple[int, int, int, int] = (0, 0, 0, 0)  # per row, fixed (v regrouped), per feature, per entry (bytes)

    def bound_for(self, rows: int, features: int, entries: int) -> int:
        """The bound once the chunks are clipped to what a run holds (at most :attr:`bound`)."""
        per_row, fixed, per_feature, per_entry = self.sizes
        r, C, E = min(rows, self.rows_per_chunk), min(features, self.features_per_chunk), min(
            entries, self.entries_per_chunk)
        return max(r * per_row, fixed + C * per_feature + E * per_entry)


def plan_dfa(batch: int, pos: int, n_heads: int, n_kv_heads: int, d_head: int, d_sae: int,
             max_bytes: int = DEFAULT_MAX_BYTES) -> DFAPlan:
    """The largest chunks whose workspace stays within ``max_bytes`` (formulas in the module docstring)."""
    N, H, S, d_in = batch * pos, n_heads, pos, n_heads * d_head
    per_row = ITEM * (d_in + 4 * d_sae)
    fixed = ITEM * N * n_kv_heads * d_head
    per_feature = ITEM * (2 * d_in + N * H)  # W_enc columns, regrouped copy, vproj
    per_entry = ITEM * ((3 * H + 1) * S + H)
    need = max(per_row, fixed + per_feature + per_entry)
    if need > max_bytes:
        raise AttnsaeError(f"max_bytes={max_bytes} is too small for a batch of {batch}x{pos} tokens: DFA needs at "
                           f"least {need} bytes; raise max_bytes or pass fewer prompts")
    rows = min(N, max_bytes // per_row)
    C = max(1, min(d_sae, (max_bytes // 2 - fixed) // per_feature))
    E = min(ENTRY_CHUNK, (max_bytes - fixed - C * per_feature) // per_entry)
    return DFAPlan(rows, C, E, max(rows * per_row, fixed + C * per_feature + E * per_entry),
                   (per_row, fixed, per_feature, per_entry))


class _Meter:
    """Bytes of live intermediates, and their peak."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0

    def add(self, *ts: Tensor) -> None:
        self.live += sum(t.nbytes for t in ts)
        self.peak = max(self.peak, self.live)

    def sub(self, *ts: Tensor) -> None:
        self.live -= sum(t.nbytes for t in ts)


# ----------------------------------------------------------------------------------------------- result


@dataclass
class DFAResult:
    """DFA of a list of entries ``(batch, dest, feature)``, E of them; ``src`` runs over the S positions.

    by_src: [E, S] (Σ over heads); by_head: [E, n_heads] (Σ over sources); by_src_head: [E, S, n_heads] or None.
    ``by_src.sum(-1) + bias == pre_act`` and ``by_head.sum(-1) + bias == pre_act``.
    """

    layer: int
    hook_name: str
    batch: Tensor  # int64 [E]
    dest: Tensor  # int64 [E]
    feature: Tensor  # int64 [E]
    act: Tensor  # [E] feature activation
    pre_act: Tensor  # [E]
    bias: Tensor  # [E] b_enc[f] − b_dec·W_enc[:, f]
    by_src: Tensor
    by_head: Tensor
    by_src_head: Tensor | None = None
    workspace_bytes: int = 0  # largest live set of intermediates, metered
    workspace_bound: int = 0  # the plan's stated bound
    plan: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.feature)

    @property
    def total(self) -> Tensor:
        """``w_iᵀ z_cat`` per entry: [E]."""
        return self.by_src.sum(-1)

    def find(self, batch: int, dest: int, feature: int) -> int:
        """Index of one entry (raises if it is not in the result)."""
        hit = ((self.batch == batch) & (self.dest == dest) & (self.feature == feature)).nonzero()
        if len(hit) == 0:
            raise AttnsaeError(f"no DFA entry for batch {batch}, position {dest}, feature {feature}")
        return int(hit[0, 0])

    def to_dict(self) -> dict:
        d = {"layer": self.layer, "hook_name": self.hook_name, "workspace_bytes": self.workspace_bytes,
             "workspace_bound": self.workspace_bound, "plan": self.plan}
        for name in ("batch", "dest", "feature", "act", "pre_act", "bias", "by_src", "by_head", "by_src_head"):
            t = getattr(self, name)
            d[name] = None if t is None else t.tolist()
        return d


# ----------------------------------------------------------------------------------------------- DFA


def dfa(model, sae: SAE, tokens: Tensor | str | Sequence[str], features: int | Sequence[int] | None = None, *,
        lengths: Tensor | None = None, dest: int | Sequence[int] | None = None, keep_src_head: bool = False,
        max_bytes: int = DEFAULT_MAX_BYTES, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> DFAResult:
    """DFA for a batch of prompts: one feature, a list of features, or (``features=None``) all active features.

    tokens: int64 [batch, pos] (with ``lengths`` [batch] if right-padded), or prompt strings (tokenised with BOS).
    With explicit features every destination position gets an entry (active or not); with ``None`` only the
    ``(batch, dest, feature)`` where the feature fires. ``dest`` restricts destination positions.
    """
    layer = check_sae(model, sae)
    if isinstance(tokens, (str, list, tuple)) and (isinstance(tokens, str) or isinstance(tokens[0], str)):
        tokens, lengths = tokenize(model, tokens, sae.cfg.prepend_bos)
    tokens = check_tokens(model, tokens)
    if features is not None:
        features = check_features(sae, features)
    require(model, "dfa", layer)
    acts = attn_activations(model, tokens, layer, lengths)
    return dfa_from_activations(acts, sae, features, lengths=lengths, dest=dest, keep_src_head=keep_src_head,
                                max_bytes=max_bytes, max_output_bytes=max_output_bytes)


@torch.no_grad()
def dfa_from_activations(acts: AttnActivations, sae: SAE, features: int | Sequence[int] | None = None, *,
                         lengths: Tensor | None = None, dest: int | Sequence[int] | None = None,
                         keep_src_head: bool = False, max_bytes: int = DEFAULT_MAX_BYTES,
                         max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
                         entries: tuple[Tensor, Tensor, Tensor] | None = None) -> DFAResult:
    """:func:`dfa` on captured activations (see the module docstring for the algebra and the memory bound).

    ``entries = (batch, dest, feature)`` (int64 [E] each) asks for exactly those entries, in that order, instead of
    ``features`` / ``dest`` (active or not).
    """
    B, S, H, G, dh = acts.shape
    d_in, d_sae = H * dh, sae.cfg.d_sae
    sae = cpu_sae(sae)
    if sae.cfg.d_in != d_in:
        raise AttnsaeError(f"the SAE has d_in {sae.cfg.d_in}, but hook_z has n_heads*d_head = {d_in}")
    plan = plan_dfa(B, S, H, G, dh, d_sae, max_bytes)
    meter = _Meter()
    order_in = None
    if entries is not None:
        eb, et, ef = (torch.as_tensor(e, dtype=torch.long).reshape(-1) for e in entries)
        if len(ef) and (ef.min() < 0 or ef.max() >= d_sae or eb.min() < 0 or eb.max() >= B or et.min() < 0
                        or et.max() >= S):
            raise AttnsaeError(f"a DFA entry is out of range: batch 0..{B - 1}, position 0..{S - 1}, "
                               f"feature 0..{d_sae - 1}")
        flat = eb * S + et
        order_in = torch.argsort(flat, stable=True)
        want_row, want_feat = flat[order_in], ef[order_in]
        rows = torch.unique_consecutive(want_row)
        feats = None
    else:
        rows = _dest_rows(B, S, lengths, dest)  # int64 [n] flat indices b*S + t
        feats = None if features is None else torch.tensor(check_features(sae, features))
    row_out = ITEM * (S + H + (S * H if keep_src_head else 0) + 6)

    # stage 1: the entries (row, feature) with their pre-activations and activations
    z_flat = acts.z.reshape(B * S, d_in)
    e_row, e_feat, e_pre, e_act = [], [], [], []
    n_entries = 0
    for i in range(0, len(rows), plan.rows_per_chunk):
        r = rows[i:i + plan.rows_per_chunk]
        x = z_flat[r].to(sae.dtype)
        pre = sae.pre_acts(x)
        act = sae.activation(pre)
        meter.add(x, pre, act)
        if order_in is not None:
            lo = int(torch.searchsorted(want_row, r[0]))
            ii = torch.arange(lo, int(torch.searchsorted(want_row, r[-1], right=True)))
            n_entries += len(ii)
            _check_output(n_entries, row_out, max_output_bytes)
            rr, ff = torch.searchsorted(r, want_row[ii]), want_feat[ii]
        elif feats is None:
            hit = act != 0
            meter.add(hit)
            n_entries += int(hit.sum())
            _check_output(n_entries, row_out, max_output_bytes)
            rr, ff = hit.nonzero(as_tuple=True)
            meter.sub(hit)
        else:
            n_entries += len(r) * len(feats)
            _check_output(n_entries, row_out, max_output_bytes)
            rr = torch.arange(len(r)).repeat_interleave(len(feats))
            ff = feats.repeat(len(r))
        e_row.append(r[rr])
        e_feat.append(ff)
        e_pre.append(pre[rr, ff].float())
        e_act.append(act[rr, ff].float())
        meter.sub(x, pre, act)
    if not e_row:
        raise AttnsaeError("no destination positions to attribute; check lengths and dest")
    e_row, e_feat, e_pre, e_act = torch.cat(e_row), torch.cat(e_feat), torch.cat(e_pre), torch.cat(e_act)
    if order_in is not None:  # back to the caller's order
        inv = torch.empty_like(order_in)
        inv[order_in] = torch.arange(len(order_in))
        e_row, e_feat, e_pre, e_act = e_row[inv], e_feat[inv], e_pre[inv], e_act[inv]
    E = len(e_feat)

    # stage 2: project v onto chunks of encoder columns, then read each entry's [head, src] products
    by_src = torch.zeros(E, S)
    by_head = torch.zeros(E, H)
    by_src_head = torch.zeros(E, S, H) if keep_src_head else None
    bias = torch.zeros(E)
    e_b, e_t = e_row // S, e_row % S
    g = H // G
    v_g = acts.v.permute(2, 3, 0, 1).reshape(G, dh, B * S)  # [G, d_head, N]
    meter.add(v_g)
    order = torch.argsort(e_feat, stable=True)
    uniq, counts = torch.unique_consecutive(e_feat[order], return_counts=True)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    b_dec = sae.b_dec.detach().float() if sae.cfg.apply_b_dec_to_input else None
    for j in range(0, len(uniq), plan.features_per_chunk):
        chunk = uniq[j:j + plan.features_per_chunk]
        C = len(chunk)
        W_c = sae.W_enc.detach()[:, chunk].float()  # [d_in, C]
        Wt = W_c.view(G, g, dh, C).permute(0, 1, 3, 2).reshape(G, g * C, dh)
        vp = torch.bmm(Wt, v_g).view(G, g, C, B, S)  # vproj[kv, q, c, b, s] for head h = kv*g + q
        meter.add(W_c, Wt, vp)
        bias_c = sae.b_enc.detach()[chunk].float() - (b_dec @ W_c if b_dec is not None else 0.0)
        idx = order[starts[j]:starts[j + C]]  # entries of these features
        local = torch.searchsorted(chunk, e_feat[idx])
        bias[idx] = bias_c[local]
        for k in range(0, len(idx), plan.entries_per_chunk):
            ii, cc = idx[k:k + plan.entries_per_chunk], local[k:k + plan.entries_per_chunk]
            A_e = acts.pattern[e_b[ii], :, e_t[ii], :]  # [E_c, H, S]
            vp_e = vp[:, :, cc, e_b[ii], :]  # [G, g, E_c, S]
            prod = A_e * vp_e.reshape(H, len(ii), S).permute(1, 0, 2)  # [E_c, H, S]
            src, head = prod.sum(1), prod.sum(2)
            meter.add(A_e, vp_e, prod, src, head)
            by_src[ii], by_head[ii] = src, head
            if by_src_head is not None:
                by_src_head[ii] = prod.transpose(1, 2)
            meter.sub(A_e, vp_e, prod, src, head)
        meter.sub(W_c, Wt, vp)
    meter.sub(v_g)

    return DFAResult(
        layer=acts.layer, hook_name=f"blocks.{acts.layer}.attn.hook_z", batch=e_b, dest=e_t, feature=e_feat,
        act=e_act, pre_act=e_pre, bias=bias, by_src=by_src, by_head=by_head,
        by_src_head=by_src_head, workspace_bytes=meter.peak,
        workspace_bound=plan.bound_for(len(rows), len(uniq), E),
        plan={"rows_per_chunk": plan.rows_per_chunk, "features_per_chunk": plan.features_per_chunk,
              "entries_per_chunk": plan.entries_per_chunk, "max_bytes": max_bytes},
    )


def _dest_rows(B: int, S: int, lengths: Tensor | None, dest: int | Sequence[int] | None) -> Tensor:
    """Flat row indices ``b*S + t`` of the destinations to attribute: [n]."""
    keep = torch.ones(B, S, dtype=torch.bool)
    if lengths is not None:
        keep &= torch.arange(S)[None] < torch.as_tensor(lengths).reshape(B, 1)
    if dest is not None:
        pos = torch.as_tensor([dest] if isinstance(dest, int) else list(dest), dtype=torch.long)
        bad = pos[(pos < 0) | (pos >= S)]
        if len(bad):
            raise AttnsaeError(f"position {int(bad[0])} is out of range: the prompt has positions 0..{S - 1}")
        sel = torch.zeros(S, dtype=torch.bool)
        sel[pos] = True
        keep &= sel[None]
    return keep.reshape(-1).nonzero()[:, 0]


def _check_output(n_entries: int, per_entry: int, max_output_bytes: int) -> None:
    if n_entries * per_entry > max_output_bytes:
        raise AttnsaeError(f"the DFA output would hold {n_entries:,} entries ({n_entries * per_entry:,} bytes, over "
                           f"max_output_bytes={max_output_bytes:,}); ask for fewer features, prompts or positions")


# ----------------------------------------------------------------------------------------------- reference


@torch.no_grad()
def dfa_reference(acts: AttnActivations, sae: SAE) -> tuple[Tensor, Tensor]:
    """The naive DFA the public dashboard code computes, for checks and benchmarks only.

    Materialises the per-source decomposition ``[batch, dest, src, d_in]`` (O(B·S²·d_in) memory), then multiplies
    by the whole encoder. Returns dense ``by_src [batch, dest, src, d_sae]`` and ``by_head [batch, dest, head,
    d_sae]`` of ``w_iᵀ z_cat``.
    """
    B, S, H, G, dh = acts.shape
    v_q = acts.v[:, :, kv_of_head(H, G)]  # [B, S, H, dh]
    decomposed = torch.einsum("bhts,bshd->btshd", acts.pattern, v_q).reshape(B, S, S, H * dh)
    W = sae.W_enc.detach().float()
    by_src = decomposed @ W
    by_head = torch.einsum("bthd,hdf->bthf", acts.z, W.view(H, dh, -1))
    return by_src, by_head
