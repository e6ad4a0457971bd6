"""One prompt with its attention patterns and norm scales frozen: the linear model an attention graph explains.

With every ``A^l_h`` (``blocks.{l}.attn.hook_pattern``) and norm scale ``σ`` (``ln1``, ``ln1_post``, ``ln_final``
``hook_scale``) held at their values on the prompt, each SAE's gating frozen (its active features pass their
pre-activation through, the others stay 0), its reconstruction error and every MLP output held constant, the
residual stream is linear in its parts. Block ``l`` (:mod:`attnsae.attribution.weights` has the value path)::

    x^{l+1} = x^l + attn_l(x^l) + mlp_l          (mlp_l: hook_mlp_out, a constant)
    attn_l  = Σ_h out(z_h W_O^h) + out(b_O) + β'                              (no SAE at l: one part per head)
            = Σ_j f_j out(d_j W_O) + out(b_dec W_O) + out(e W_O) + out(b_O) + β'   (an SAE: e = z − x̂, constant)

:class:`FrozenPrompt` captures the prompt once, holds every part (:meth:`FrozenPrompt.parts`), checks that they sum to
the model's residual stream at every layer and that the frozen run gives the model's logits, and runs the frozen
model (:meth:`FrozenPrompt.run`) with parts removed or with a probe added after each attention layer (the gradient
of a target with respect to the residual stream, :meth:`FrozenPrompt.grad`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor

from attnsae.attribution.weights import LayerWeights, layer_weights, unembed_weights
from attnsae.errors import AttnsaeError
from attnsae.models import check_tokens
from attnsae.models.architecture import describe
from attnsae.models.hooks import capture
from attnsae.sae.checks import check_sae
from attnsae.sae.model import SAE


@dataclass
class FrozenSAE:
    """One SAE on the prompt, float32: pre-activations and activations [S, d_sae], the encoder, decoder and the
    bias of its DFA identity ``b_enc − b_dec·W_enc`` [d_sae], and its decoder through W_O is formed on demand."""

    sae: SAE
    pre: Tensor
    act: Tensor
    W_enc: Tensor  # [d_in, d_sae]
    W_dec: Tensor  # [d_sae, d_in]
    b_dec: Tensor  # [d_in]
    bias: Tensor  # [d_sae]

    @property
    def active(self) -> Tensor:
        """bool [S, d_sae]: the features firing at each position (their gating is frozen)."""
        return self.act != 0


def _frozen_mlp(block, norm, scale: Tensor, d: int) -> Callable[[Tensor], Tensor]:
    """``y [S, d_model] -> mlp(ln2(y))`` of ``block`` with ln2's scale frozen at ``scale`` [S] (so ln2 is linear, as
    every norm of the frozen model) and the parameters detached (the caller's graph only); ``rows`` (a slice of
    positions) when ``y`` holds only those."""
    from attnsae.models.architecture import norm_weights

    gamma, beta = norm_weights(block.ln2, norm, d)
    params = {n: p.detach() for n, p in block.mlp.named_parameters()}
    first = next(iter(params.values()))

    def fn(y: Tensor, rows: slice = slice(None)) -> Tensor:
        h = centre(y, norm.kind == "LN") / scale[rows, None] * gamma + beta
        out = torch.func.functional_call(block.mlp, params, (h[None].to(first.device, first.dtype),))
        return out[0].to(y.device, torch.float32)

    return fn


def centre(x: Tensor, norm_centres: bool) -> Tensor:
    """``x − mean(x)`` over the last dim for a LayerNorm, ``x`` for an RMSNorm or none."""
    return x - x.mean(-1, keepdim=True) if norm_centres else x


def removal(kind: str, layer: int, pos: int, index: int) -> Callable[[int, str, Tensor], Tensor]:
    """An ``edit`` for :meth:`FrozenPrompt.run` that removes one node (:mod:`attnsae.graph.graph` names the kinds):
    zeroes a feature's activation or a head's output, or a leaf's part, at its position."""
    part = {"feature": "act", "head": "heads", "token": "hook_embed", "position": "hook_pos_embed"}.get(kind, kind)
    at = -1 if kind in ("token", "position") else layer

    def edit(l: int, name: str, v: Tensor) -> Tensor:
        if l != at or name != part:
            return v
        v = v.clone()
        if kind in ("feature", "head"):
            v[pos, index] = 0
        else:
            v[pos] = 0
        return v

    return edit


def measured_removals(fp: "FrozenPrompt", target, graph, kinds: tuple[str, ...], per_kind: int = 1
                      ) -> list[tuple[int, float]]:
    """For the ``per_kind`` nodes of largest |effect| of each of ``kinds`` in ``graph``: (node, how much ``target``
    falls when that node is removed from the frozen model), measured with a forward pass, not from the edges (the
    check of :attr:`attnsae.graph.graph.Graph.effect`)."""
    base = float(target.frozen_value(fp))
    out = []
    for kind in kinds:
        ids = graph.is_kind(kind).nonzero()[:, 0]
        for i in ids[graph.effect[ids].abs().argsort(descending=True)[:per_kind]].tolist():
            edit = removal(kind, int(graph.layer[i]), int(graph.pos[i]), int(graph.index[i]))
            out.append((i, base - float(target.frozen_value(fp, edit=edit))))
    return out


class FrozenPrompt:
    """One prompt (``tokens`` int64 [S] or [1, S]) and SAEs ``{layer: SAE}`` (any subset of layers, none included).

    ``mlp="leaf"`` holds every MLP output constant. ``mlp="linear"`` replaces each MLP by its first-order expansion
    at the prompt, ``mlp(y) = J y + r`` (``J`` the Jacobian of ``mlp(ln2(·))`` at the prompt's input ``y0`` with
    ln2's scale frozen like every norm here, ``r = mlp(y0) − J y0`` a constant): the MLP's linear part then carries
    what reaches it, and ``r`` what the expansion leaves out. Exact at the prompt; a first-order approximation of the
    MLP anywhere else."""

    def __init__(self, model, saes: Mapping[int, SAE], tokens: Tensor, mlp: str = "leaf") -> None:
        arch = describe(model)
        why = arch.refusal("graph")
        if why:
            raise AttnsaeError(why)
        tokens = check_tokens(model, tokens)
        if tokens.shape[0] != 1:
            raise AttnsaeError(f"a graph explains one prompt, got a batch of {tokens.shape[0]}")
        self.tokens = tokens[0].cpu()
        self._heads: dict[int, Tensor] = {}  # head outputs per layer, once asked for
        self.S = S = len(self.tokens)
        self.n_layers = N = int(model.cfg.n_layers)
        self.embed_hooks = list(arch.embed_hooks)
        self.saes: dict[int, FrozenSAE] = {}
        layers = {check_sae(model, s): s for s in saes.values()}
        if sorted(layers) != sorted(saes):
            raise AttnsaeError("each SAE must be given for the layer it reads")
        self.W: list[LayerWeights] = [layer_weights(model, l) for l in range(N)]
        self.W_U, self.b_U, self.final_norm, self.final_w, self.final_b = unembed_weights(model)
        names = list(self.embed_hooks) + ["ln_final.hook_scale"]
        for l in range(N):
            names += [f"blocks.{l}.hook_resid_pre", f"blocks.{l}.attn.hook_pattern", f"blocks.{l}.attn.hook_z",
                      f"blocks.{l}.hook_mlp_out"]
            names += [f"blocks.{l}.ln1.hook_scale"] if self.W[l].in_norm else []
            names += [f"blocks.{l}.ln1_post.hook_scale"] if self.W[l].out_norm else []
        c = {k: v[0] for k, v in capture(model, self.tokens[None], names, return_logits=True).items()}
        missing = [n for n in names if n not in c]
        if missing:
            raise AttnsaeError(f"a graph needs hook {missing[0]}, which this model does not expose")
        self.logits = c["logits"]  # [S, d_vocab]
        self.embeds = {n: c[n] for n in self.embed_hooks}  # [S, d_model] each
        self.resid = [c[f"blocks.{l}.hook_resid_pre"] for l in range(N)]
        self.A = [c[f"blocks.{l}.attn.hook_pattern"] for l in range(N)]  # [H, S, S]
        self.z = [c[f"blocks.{l}.attn.hook_z"] for l in range(N)]  # [S, H, d_head]
        self.mlp = [c[f"blocks.{l}.hook_mlp_out"] for l in range(N)]
        ones = torch.ones(S)
        self.scale = [c[f"blocks.{l}.ln1.hook_scale"].reshape(S) if self.W[l].in_norm else ones for l in range(N)]
        self.post_scale = [c[f"blocks.{l}.ln1_post.hook_scale"].reshape(S) if self.W[l].out_norm else None
                           for l in range(N)]
        self.final_scale = c["ln_final.hook_scale"].reshape(S) if self.final_norm else ones
        if mlp not in ("leaf", "linear"):
            raise AttnsaeError(f"--mlp must be leaf or linear, got {mlp!r}")
        self.mlp_mode = mlp
        if mlp == "linear":
            self._linear_mlps(model)
        with torch.no_grad():
            for l, s in sorted(layers.items()):
                W_enc = s.W_enc.detach().float()
                b_dec = s.b_dec.detach().float()
                pre = s.pre_acts(self.z[l].reshape(S, -1).to(s.dtype))
                bias = s.b_enc.detach().float() - (b_dec @ W_enc if s.cfg.apply_b_dec_to_input else 0.0)
                self.saes[l] = FrozenSAE(s, pre.float(), s.activation(pre).float(), W_enc,
                                         s.W_dec.detach().float(), b_dec, bias)
        self._check()

    def _linear_mlps(self, model) -> None:
        """Each MLP as ``mlp(ln2(y))`` with its weights detached (the user's model gains no gradients), checked
        against ``hook_mlp_out``; whether it reads the stream after attention (``resid_mid``) or before (parallel
        blocks); its linear part ``J y0`` and remainder ``r`` [S, d_model]."""
        from attnsae.models.architecture import match_norm

        names = [f"blocks.{l}.{n}" for l in range(self.n_layers)
                 for n in ("ln2.hook_in", "ln2.hook_scale", "ln2.hook_out", "hook_resid_mid")]
        c = {k: v[0] for k, v in capture(model, self.tokens[None], names).items()}
        self.mlp_fn, self.mlp_y0, self.mlp_reads_mid, self.mlp_lin, self.mlp_rest = [], [], [], [], []
        for l in range(self.n_layers):
            block = model.blocks[l]
            y0, scale = c.get(f"blocks.{l}.ln2.hook_in"), c.get(f"blocks.{l}.ln2.hook_scale")
            norm = None if y0 is None or scale is None else match_norm(y0, scale, c.get(f"blocks.{l}.ln2.hook_out"),
                                                                      getattr(block, "ln2", None), 1e-4)
            if norm is None:
                raise AttnsaeError(f"--mlp linear is refused: block {l}'s MLP input is not a known norm (ln2) of the "
                                   "residual stream; use --mlp leaf")
            scale = scale.reshape(-1)
            r_mid = c.get(f"blocks.{l}.hook_resid_mid")
            mid = r_mid is not None and float((y0 - r_mid).abs().max()) <= 1e-4 * float(y0.abs().max()) + 1e-5
            pre = float((y0 - self.resid[l]).abs().max()) <= 1e-4 * float(y0.abs().max()) + 1e-5
            fn = _frozen_mlp(block, norm, scale, y0.shape[-1])
            with torch.no_grad():
                out = fn(y0)
            if not (mid or pre) or not float((out - self.mlp[l]).abs().max()) <= 1e-3 * float(
                    self.mlp[l].abs().max()) + 1e-5:
                raise AttnsaeError(f"--mlp linear is refused: blocks.{l}.hook_mlp_out is not mlp(ln2(·)) of the "
                                   "residual stream on this model; use --mlp leaf")
            lin = torch.func.jvp(fn, (y0,), (y0,))[1].detach()
            self.mlp_fn.append(fn)
            self.mlp_y0.append(y0)
            self.mlp_reads_mid.append(mid)
            self.mlp_lin.append(lin)
            self.mlp_rest.append(self.mlp[l] - lin)

    def mlp_jvp(self, l: int, y: Tensor) -> Tensor:
        """``J y`` for MLP ``l`` (its Jacobian at the prompt): [S, d_model]."""
        return torch.func.jvp(self.mlp_fn[l], (self.mlp_y0[l],), (y,))[1]

    def mlp_vjp(self, l: int, g: Tensor, pos: int | None = None) -> Tensor:
        """``Jᵀ g`` for MLP ``l``: [S, d_model] (each position's own Jacobian; the MLP acts position by position), or
        at one position ``pos`` for ``g`` [d_model]."""
        if pos is None:
            return torch.func.vjp(self.mlp_fn[l], self.mlp_y0[l])[1](g)[0]
        rows = slice(pos, pos + 1)
        return torch.func.vjp(lambda y: self.mlp_fn[l](y, rows), self.mlp_y0[l][rows])[1](g[None])[0][0]

    # ------------------------------------------------------------------------------------------- parts

    def out(self, l: int, y: Tensor) -> Tensor:
        """A term ``y`` [S, ..., d_model] of layer ``l``'s ``z_cat @ W_O_cat + b_O`` as the post-attention norm
        makes it (its scale at each position frozen; β' not included)."""
        ps = self.post_scale[l]
        if ps is None:
            return self.W[l].out(y)
        return self.W[l].out(y, ps.reshape(-1, *([1] * (y.ndim - 2))))

    def error(self, l: int) -> Tensor:
        """The SAE of layer ``l``'s reconstruction error ``z_cat − x̂``: [S, d_in]."""
        f = self.saes[l]
        return self.z[l].reshape(self.S, -1) - (f.act @ f.W_dec + f.b_dec)

    def bias_part(self, l: int) -> Tensor:
        """Layer ``l``'s constant output: out(b_dec W_O) with an SAE, + out(b_O) + β': [S, d_model]."""
        W = self.W[l]
        y = W.b_O.expand(self.S, -1)
        if l in self.saes:
            y = y + self.saes[l].b_dec @ W.W_O_cat
        part = self.out(l, y)
        return part + W.post_b if W.post_b is not None else part

    def head_outputs(self, l: int, z: Tensor | None = None) -> Tensor:
        """Each head's output ``out(z_h W_O^h)``: [S, H, d_model] (``z`` [S, H, d_head], default the prompt's,
        computed once)."""
        if z is None:
            if l not in self._heads:
                self._heads[l] = self.head_outputs(l, self.z[l])
            return self._heads[l]
        return self.out(l, torch.einsum("shd,hdm->shm", z, self.W[l].W_O))

    def feature_outputs(self, l: int, features: Tensor) -> Tensor:
        """``out(d_j W_O)`` per row (position, feature) of ``features`` int64 [n, 2]: [n, d_model]."""
        f = self.saes[l]
        y = f.W_dec[features[:, 1]] @ self.W[l].W_O_cat
        ps = self.post_scale[l]
        return self.W[l].out(y, 1.0 if ps is None else ps[features[:, 0]])

    # ------------------------------------------------------------------------------------------- frozen run

    def read(self, l: int, x: Tensor) -> Tensor:
        """Layer ``l``'s value input with its scale frozen: ``γ ⊙ centre(x)/σ + β`` [S, d_model]."""
        W = self.W[l]
        if W.in_norm is None:
            return x
        return centre(x, W.centres_input) / self.scale[l][:, None] * W.ln_w + W.ln_b

    def attend(self, l: int, x: Tensor) -> Tensor:
        """``z`` [S, H, d_head] of the frozen attention of layer ``l`` on residual ``x`` [S, d_model]."""
        W = self.W[l]
        v = torch.einsum("sm,gmd->sgd", self.read(l, x), W.W_V) + W.b_V  # [S, n_kv, d_head]
        return torch.einsum("hts,shd->thd", self.A[l], v[:, W.kv_of_head])

    def run(self, edit: Callable[[int, str, Tensor], Tensor] | None = None, probes: list[Tensor] | None = None,
            streams: list[Tensor] | None = None) -> Tensor:
        """The frozen model's final residual stream [S, d_model].

        ``edit(layer, part, value)`` may replace a part as it is formed: ``"act"`` (an SAE's activations [S, d_sae]),
        ``"heads"`` (head outputs [S, H, d_model]), ``"error"``, ``"bias"``, ``"mlp"`` ([S, d_model]) and, with layer
        -1, each embedding hook by name; with ``mlp="linear"`` the MLP's parts are ``"mlp"`` (``J y``) and
        ``"mlp_rest"``. ``probes[2l]`` [S, d_model] is added after attention layer ``l`` and ``probes[2l + 1]`` after
        its MLP (zeros: handles for the gradient); ``streams`` receives each block's input ``x^l``."""
        edit = edit or (lambda l, part, v: v)
        x = sum(edit(-1, n, e) for n, e in self.embeds.items())
        for l in range(self.n_layers):
            if streams is not None:
                streams.append(x)
            z = self.attend(l, x)
            if l in self.saes:
                f = self.saes[l]
                act = edit(l, "act", (z.reshape(self.S, -1) @ f.W_enc + f.bias) * f.active)
                attn = self.out(l, act @ f.W_dec @ self.W[l].W_O_cat) + edit(l, "error", self.out(
                    l, self.error(l) @ self.W[l].W_O_cat))
            else:
                attn = edit(l, "heads", self.head_outputs(l, z)).sum(1)
            x_pre = x
            x = x + attn + edit(l, "bias", self.bias_part(l))
            if probes is not None:
                x = x + probes[2 * l]
            if self.mlp_mode == "linear":
                y = x if self.mlp_reads_mid[l] else x_pre
                x = x + edit(l, "mlp", self.mlp_jvp(l, y)) + edit(l, "mlp_rest", self.mlp_rest[l])
            else:
                x = x + edit(l, "mlp", self.mlp[l])
            if probes is not None:
                x = x + probes[2 * l + 1]
        return x

    def final_read(self, x: Tensor, pos: int, direction: Tensor) -> Tensor:
        """``final_norm(x[pos]) · direction`` with the final scale frozen (no bias): a scalar."""
        y = centre(x[pos], self.final_norm is not None and self.final_norm.kind == "LN") / self.final_scale[pos]
        return (y * self.final_w) @ direction

    def grad(self, value: Callable[[list[Tensor]], Tensor]) -> Tensor:
        """``∂ value / ∂ x`` after every attention layer (row ``2l``) and every MLP (row ``2l + 1``) of the frozen
        model: [2 n_layers, S, d_model]. ``value(probes)`` runs the frozen model with ``probes`` (:meth:`run`) and
        returns a scalar."""
        probes = torch.zeros(2 * self.n_layers, self.S, self.W[0].W_O.shape[-1], requires_grad=True)
        with torch.enable_grad():
            value(list(probes)).backward()
        return probes.grad

    # ------------------------------------------------------------------------------------------- checks

    @torch.no_grad()
    def _check(self) -> None:
        """The frozen run reproduces the model's residual stream at every layer and its logits."""
        streams: list[Tensor] = []
        x = self.run(streams=streams)
        rel = 1e-4 if self.W[0].W_V.dtype == torch.float32 else 3e-2
        for l, (got, want) in enumerate(zip(streams, self.resid)):
            self._close(got, want, f"the parts' sum at blocks.{l}.hook_resid_pre", rel)
        logits = torch.stack([self.final_read(x, p, self.W_U) for p in range(self.S)]) + self.final_b @ self.W_U \
            + self.b_U
        self._close(logits, self.logits, "the frozen model's logits", max(rel, 1e-3))

    @staticmethod
    def _close(a: Tensor, b: Tensor, what: str, rel: float) -> None:
        err = float((a - b).abs().max())
        if not err <= rel * float(b.abs().max()) + 1e-5:
            raise AttnsaeError(f"a graph cannot be built for this model: {what} does not match the model (max error "
                               f"{err:.3g}); its blocks do not fit the layout the graph assumes")
