"""One prompt captured for recursive DFA (:mod:`attnsae.attribution.rdfa`): attention patterns, value vectors, the SAEs'
activations and the residual stream's components, checked against the model once.

:class:`RDFAPrompt` holds what every node of a tree reads (the identities are in :mod:`attnsae.attribution.rdfa`;
the nodes are expanded by :mod:`attnsae.attribution.rdfa_nodes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor

from attnsae.attribution.inputs import token_strings
from attnsae.attribution.weights import LayerWeights, layer_weights
from attnsae.errors import AttnsaeError
from attnsae.models import check_tokens
from attnsae.models.architecture import describe, require
from attnsae.models.fast_attention import fused_attention
from attnsae.models.hooks import capture, kv_of_head
from attnsae.attribution.patterns import QK, Patterns, plain_softmax, qk_hooks, scaling_of
from attnsae.sae.checks import check_sae, cpu_sae
from attnsae.sae.model import SAE


DEFAULT_PATTERN_BYTES = 256 * 2**20  # attention patterns kept in memory (float32 [head, dest, src] per layer)


@dataclass
class SAELayer:
    """One SAE on the prompt: its pre-activations, activations and the bias of its DFA identity."""

    sae: SAE
    pre: Tensor  # [S, d_sae]
    act: Tensor  # [S, d_sae]
    bias: Tensor  # [d_sae]: b_enc − b_dec·W_enc


class RDFAPrompt:
    """One prompt (``tokens`` int64 [pos] or [1, pos]) captured once with the SAE ``sae`` at its layer and the
    ``upstream_saes`` of earlier layers (a list, or ``{layer: SAE}``), whose features split those layers' attention
    outputs; layers without one stay whole (``hook_attn_out``).

    A model RDFA cannot decompose raises its one-line refusal, unless ``dfa_fallback``: then only the SAE's own layer
    is captured (plain DFA) and :attr:`refused` says why. Attention patterns ``[head, dest, src]`` per layer (the
    one capture that grows with the prompt's length squared) come as rows from the captured queries and keys where
    that reproduces the model (:class:`~attnsae.attribution.patterns.Patterns`); other layers' are captured with the
    rest when they fit in ``pattern_bytes``, else when first needed. ``keep_logits``
    runs the whole model and keeps its logits (:attr:`logits` [pos, d_vocab]). ``lazy_components`` builds the
    residual stream's components (and checks them against the model) when RDFA first needs them, not here: DFA and
    the features answer sooner.
    """

    def __init__(self, model, sae: SAE, tokens: Tensor, upstream_saes: Sequence[SAE] | Mapping[int, SAE] = (),
                 centre_components: bool = True, dfa_fallback: bool = False, keep_logits: bool = False,
                 pattern_bytes: int = DEFAULT_PATTERN_BYTES, lazy_components: bool = False) -> None:
        self.layer = L = check_sae(model, sae)
        self.refused = describe(model).refusal("rdfa", L)
        if self.refused and not dfa_fallback:
            raise AttnsaeError(self.refused)
        require(model, "dfa", L)
        layers = [L] if self.refused else list(range(L + 1))
        tokens = check_tokens(model, tokens)
        if tokens.shape[0] != 1:
            raise AttnsaeError(f"RDFA traces one prompt at a time, got a batch of {tokens.shape[0]}")
        self.tokens = tokens[0]
        self.token_strs = token_strings(model, self.tokens)
        ups = list(upstream_saes.values()) if isinstance(upstream_saes, Mapping) else list(upstream_saes)
        saes = {L: cpu_sae(sae)}
        for u in ([] if self.refused else ups):
            lu = check_sae(model, u)
            if lu >= L:
                raise AttnsaeError(f"an upstream SAE must read a layer before {L}, not layer {lu}")
            saes[lu] = cpu_sae(u)
        self.model_dtype = next(model.parameters()).dtype
        self.W: dict[int, LayerWeights] = {l: layer_weights(model, l) for l in layers}
        self.centre_components = centre_components
        self.n_heads = self.W[L].n_heads
        self.d_head = self.W[L].d_head

        S = len(self.tokens)
        # pattern rows from queries and keys wherever the attention is plain causal softmax (checked against hook_z:
        # attribution.patterns); the other layers' patterns captured whole when they fit in pattern_bytes
        qk_layers = [l for l in range(int(model.cfg.n_layers) if keep_logits else L + 1) if plain_softmax(model, l)]
        whole = [l for l in layers if l not in qk_layers]
        eager = self.n_heads * S * S * 4 * len(whole) <= pattern_bytes
        names = [] if self.refused else ["hook_embed", "hook_pos_embed"]
        for l in layers:
            names += [f"blocks.{l}.hook_resid_pre", f"blocks.{l}.attn.hook_v", f"blocks.{l}.attn.hook_z"]
            names += [f"blocks.{l}.attn.hook_pattern"] if eager and l in whole else []
            if self.W[l].in_norm is not None and not self.refused:
                names += [f"blocks.{l}.ln1.hook_scale", f"blocks.{l}.ln1.hook_normalized"]
            if self.W[l].out_norm is not None and l < L:
                names.append(f"blocks.{l}.ln1_post.hook_scale")
            if l < L:
                names += [f"blocks.{l}.hook_attn_out", f"blocks.{l}.hook_mlp_out"]
        if keep_logits:
            names.append("ln_final.hook_scale")
        required = list(names)
        for l in qk_layers:  # optional: a layer whose queries and keys do not come falls back to its pattern
            names += [*qk_hooks(model, l)] + ([f"blocks.{l}.attn.hook_v", f"blocks.{l}.attn.hook_z"]
                                               if l not in layers else [])
        with fused_attention(model):  # SDPA in every layer whose pattern is not captured
            c = {k: v[0] for k, v in capture(model, self.tokens[None], names,
                                             stop_at_layer=None if keep_logits else L + 1,
                                             return_logits=keep_logits).items()}
        missing = [n for n in required if n not in c and n not in ("hook_pos_embed", "ln_final.hook_scale")]
        if missing:
            raise AttnsaeError(f"RDFA needs hook {missing[0]}, which this model does not expose")
        self.S = S
        self.logits: Tensor | None = c.get("logits")  # [S, d_vocab] with keep_logits
        self.final_scale: Tensor | None = c["ln_final.hook_scale"].reshape(S) if "ln_final.hook_scale" in c else None
        self.v = {l: c[f"blocks.{l}.attn.hook_v"] for l in layers}  # [S, n_kv, d_head]
        self.A = Patterns(model, self.tokens, pattern_bytes,
                          {l: c[f"blocks.{l}.attn.hook_pattern"] for l in whole} if eager else {},
                          self._queries_keys(model, c, qk_layers))
        self.z = {l: c[f"blocks.{l}.attn.hook_z"].reshape(S, -1) for l in layers}  # [S, d_in]

        self.saes: dict[int, SAELayer] = {}
        with torch.no_grad():
            for l, s in saes.items():
                x = self.z[l].to(s.dtype)
                pre = s.pre_acts(x)
                W_enc = s.W_enc.detach().float()
                bias = s.b_enc.detach().float() - (s.b_dec.detach().float() @ W_enc if s.cfg.apply_b_dec_to_input
                                                   else 0.0)
                self.saes[l] = SAELayer(s, pre.float(), s.activation(pre).float(), bias)

        if not self.refused and lazy_components:  # built and checked on first use (:meth:`__getattr__`)
            self._pending = (model, c)
        elif not self.refused:
            self._components(model, c)

    _LAZY = frozenset({"resid", "scale", "post_scale", "comps", "comp_mean", "origin", "comp_names", "_dirs"})

    def __getattr__(self, name: str):
        """With ``lazy_components``: the residual stream's components, built and checked when first read."""
        state = self.__dict__
        if name not in RDFAPrompt._LAZY or not ("_pending" in state or "_lazy_error" in state):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        if "_lazy_error" in state:  # the check failed once: every later use says why again
            raise state["_lazy_error"]
        try:
            self._components(*state.pop("_pending"))
        except AttnsaeError as e:
            for built in RDFAPrompt._LAZY:  # none of what the failed check was about is left to read
                state.pop(built, None)
            state["_lazy_error"] = e
            raise
        return getattr(self, name)

    @staticmethod
    def _queries_keys(model, c: dict[str, Tensor], layers: list[int]) -> dict[int, QK]:
        """The layers whose pattern rows the captured queries and keys reproduce (checked against hook_z)."""
        out = {}
        for l in layers:
            nq, nk = qk_hooks(model, l)
            v, z = c.get(f"blocks.{l}.attn.hook_v"), c.get(f"blocks.{l}.attn.hook_z")
            if nq not in c or nk not in c or v is None or z is None:
                continue
            q, k = c[nq], c[nk]  # [S, H, d_head], [S, n_kv, d_head]
            qk = QK(q, k, kv_of_head(q.shape[1], k.shape[1]), scaling_of(model, l, q.shape[-1]))
            if qk.matches(v, z.reshape(q.shape)):
                out[l] = qk
        return out

    def _components(self, model, c: dict[str, Tensor]) -> None:
        """The residual stream's components at every layer up to the top one, checked against the model."""
        L, S = self.layer, self.S
        self.resid = {l: c[f"blocks.{l}.hook_resid_pre"] for l in range(L + 1)}  # [S, d_model]
        self.scale = {l: c[f"blocks.{l}.ln1.hook_scale"].reshape(S) if self.W[l].in_norm else torch.ones(S)
                      for l in range(L + 1)}  # [S] (ones without a pre-norm)
        self.post_scale = {l: c[f"blocks.{l}.ln1_post.hook_scale"].reshape(S) if self.W[l].out_norm else None
                           for l in range(L)}  # [S] of a post-attention norm
        # rows of comps[:, k] with the layer that wrote them (-1: embeddings)
        parts: dict[str, Tensor] = {n: c[n] for n in describe(model).embed_hooks}
        origin = [-1] * len(parts)
        rows, self.comp_names = list(parts.values()), list(parts)
        for l in range(L):
            W = self.W[l]
            if l in self.saes:
                sl = self.saes[l]
                x_hat = sl.sae.decode(sl.act.to(sl.sae.dtype)).detach().float()
                b_dec = sl.sae.b_dec.detach().float()
                ps = self.post_scale[l]
                parts = {f"blocks.{l}.attn.sae.b_dec": W.out((b_dec @ W.W_O_cat).expand(S, -1), ps),
                         f"blocks.{l}.attn.sae.error": W.out((self.z[l] - x_hat) @ W.W_O_cat, ps)}
                if W.has_b_O:
                    parts[f"blocks.{l}.attn.b_O"] = W.out(W.b_O.expand(S, -1), ps)
                if W.post_b is not None and bool(W.post_b.any()):
                    parts[f"blocks.{l}.ln1_post.b"] = W.post_b.expand(S, -1)
            else:
                parts = {f"blocks.{l}.hook_attn_out": c[f"blocks.{l}.hook_attn_out"]}
            parts[f"blocks.{l}.hook_mlp_out"] = c[f"blocks.{l}.hook_mlp_out"]
            rows += parts.values()
            self.comp_names += parts
            origin += [l] * len(parts)
        self.comps = torch.stack(rows, dim=1)  # [S, n_comp, d_model]
        self.comp_mean = self.comps.mean(-1)  # [S, n_comp]
        self.origin = torch.tensor(origin)
        self._dirs: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor, Tensor]] = {}
        self._check(c)

    # ------------------------------------------------------------------------------------------- checks

    def _check(self, c: dict[str, Tensor]) -> None:
        rel = 1e-4 if self.model_dtype == torch.float32 else 3e-2  # the model's own rounding

        def close(a: Tensor, b: Tensor, what: str) -> None:
            err = float((a - b).abs().max())
            tol = rel * float(b.abs().max()) + 1e-5
            if not err <= tol:
                raise AttnsaeError(f"RDFA cannot decompose this model: {what} does not match the model (max error "
                                   f"{err:.3g}); its blocks do not fit the pre-norm layout RDFA assumes")

        total = self.comps[:, self.origin < 0].sum(1)  # [S, d_model]: the components written before layer l
        for l in range(self.layer + 1):
            if l > 0:  # add what layer l - 1 wrote: its components, and its SAE's features where it has one
                total = total + self.comps[:, self.origin == l - 1].sum(1)
                if l - 1 in self.saes:
                    sl, W = self.saes[l - 1], self.W[l - 1]
                    total = total + W.out((sl.act @ sl.sae.W_dec.detach().float()) @ W.W_O_cat, self.post_scale[l - 1])
            close(total, self.resid[l], f"the sum of components at blocks.{l}.hook_resid_pre")
            W = self.W[l]
            ln_out = self.resid[l]
            if W.in_norm is not None:
                x = ln_out - ln_out.mean(-1, keepdim=True) if W.centres_input else ln_out
                normed = x / self.scale[l][:, None]
                close(normed, c[f"blocks.{l}.ln1.hook_normalized"], f"blocks.{l}.ln1.hook_normalized")
                ln_out = normed * W.ln_w + W.ln_b
            v = torch.einsum("sm,gmd->sgd", ln_out, W.W_V) + W.b_V
            close(v, self.v[l], f"ln1 @ W_V + b_V at blocks.{l}.attn.hook_v")

    def _check_layer(self, layer: int) -> int:
        if layer not in self.saes:
            raise AttnsaeError(f"layer {layer} has no SAE here: the SAEs read layers "
                               f"{', '.join(map(str, sorted(self.saes)))}")
        return layer

    def _check_position(self, position: int) -> None:
        if not 0 <= position < self.S:
            raise AttnsaeError(f"position {position} is out of range: the prompt has positions 0..{self.S - 1}")

    def dfa_terms(self, layer: int, feature: int, position: int) -> Tensor:
        """``A_h[t, s]·(w_{j,h} · v_{kv(h)}[s])``: [S, H], the DFA of ``feature`` j of the SAE at ``layer`` at
        ``position`` t; it sums to ``pre_j[t] − bias_j``."""
        w = self.saes[layer].sae.W_enc.detach()[:, feature].float().view(self.n_heads, self.d_head)  # [H, d_head]
        vw = torch.einsum("shd,hd->sh", self.v[layer][:, self.W[layer].kv_of_head], w)  # [S, H]
        return self.A.row(layer, position).T * vw

    def directions(self, l: int, s: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Active features of layer l's SAE at s: (indices [n], activations [n], d_j W_O [n, d_model], means [n])."""
        key = (l, s)
        if key not in self._dirs:
            sl = self.saes[l]
            js = (sl.act[s] != 0).nonzero()[:, 0]
            ps = self.post_scale[l]
            D = self.W[l].out(sl.sae.W_dec.detach()[js].float() @ self.W[l].W_O_cat,
                              1.0 if ps is None else float(ps[s]))
            self._dirs[key] = (js, sl.act[s, js], D, D.mean(-1))
        return self._dirs[key]
