"""What a loaded model's blocks really compute, read from the model itself on a probe, and what each stage may do.

Flags in the bridge's config are not trusted (Gemma 3 and OLMo 2 report ``use_normalization_before_and_after=False``
although their attention output is normalised). Instead :func:`describe` runs the model once on a short probe
context and tests which identity each hook satisfies, within the model's own rounding:

* **value input** (per block): ``hook_v == norm(resid_pre) @ W_V + b_V`` with ``norm`` the block's ``ln1`` as a
  LayerNorm (centre, ``γ``, ``β``) or an RMSNorm (``γ`` or ``1 + w``), or with no norm at all (OLMo 2);
* **attention output**: ``hook_attn_out == z_cat @ W_O + b_O`` (plain), or that passed through the block's
  post-attention norm ``ln1_post`` (sandwich norms: Gemma 2/3, OLMo 2);
* **residual**: ``resid_pre[l+1] == resid_pre[l] + attn_out + mlp_out`` (sequential and parallel blocks alike) or
  not (post-LN encoders such as BERT normalise the sum);
* **DFA identity**: ``z_h[t] == Σ_s A_h[t, s] v_{kv(h)}[s]``;
* **embeddings**: ``resid_pre[0] == hook_embed (+ hook_pos_embed)``;
* **LM head**: ``logits == ln_final(resid_post[-1]) @ W_U + b_U`` (linear) or not (an MLM transform, soft-capping);
* **direction**: causal when no destination attends to a later source; **windows**: one more than the longest
  distance attended per layer on the probe, or the declared ``sliding_window`` when it is longer than the probe.

:meth:`Architecture.refusal` turns the layout into each stage's one-line refusal, or ``None`` when the stage is exact.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from attnsae.errors import AttnsaeError

PROBE_LEN = 48  # tokens in the probe context (fewer when n_ctx is smaller)
STAGES = ("harvest", "train", "eval_reconstruction", "eval_ce", "dfa", "rdfa", "logit_effect", "families", "graph")


@dataclass
class Norm:
    """A normalisation as the probe found it: ``kind`` ``"LN"`` (centring, γ, β) or ``"RMS"`` (γ only); ``offset``:
    the scale is ``1 + w`` (Gemma)."""

    kind: str
    offset: bool = False

    def __str__(self) -> str:
        return {"LN": "LayerNorm", "RMS": "RMSNorm"}[self.kind] + (" (1 + w)" if self.offset else "")


@dataclass
class Block:
    """One block's layout (``None`` fields: absent; ``"?"`` strings: no identity held)."""

    layer: int
    attn_in: Norm | None  # the norm feeding W_V (None: W_V reads the residual stream directly)
    attn_in_known: bool  # whether hook_v matched one of the candidates
    attn_out: Norm | None  # post-attention norm (sandwich), None when attn_out == z W_O + b_O
    attn_out_known: bool
    additive: bool  # resid_pre[l+1] == resid_pre[l] + attn_out + mlp_out
    dfa_identity: bool  # z == Σ_s A v
    window: int | None  # sliding-window size (None: full attention)
    rope_theta: float | None


@dataclass
class Architecture:
    """A model's layout as far as attnsae's stages care (see the module docstring for how each field is read)."""

    model_type: str
    hf_class: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_vocab: int
    n_ctx: int
    causal: bool
    positional: str  # "learned absolute" | "rotary" | "rotary (partial, 50%)" | "none"
    embed_hooks: list[str]  # the hooks whose sum is resid_pre[0]; empty when none fits
    final_norm: Norm | None
    lm_head: str  # "linear" | "nonlinear" | "none"
    lm_head_trained: bool
    blocks: list[Block] = field(default_factory=list)
    probe_len: int = 0

    # ------------------------------------------------------------------------------------------- verdicts

    def refusal(self, stage: str, layer: int | None = None) -> str | None:
        """Why ``stage`` (one of :data:`STAGES`) cannot be exact on this model (at ``layer``), or None if it is."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        blocks = self.blocks if layer is None else self.blocks[:layer + 1]
        if stage in ("harvest", "train", "eval_reconstruction"):
            return None
        if stage == "eval_ce":
            if not self.causal:
                return ("CE and KL are refused: this model attends in both directions (an encoder), so next-token "
                        "loss is meaningless; reconstruction metrics are still reported")
            if self.lm_head == "none" or not self.lm_head_trained:
                return ("CE and KL are refused: the model's LM head was not in its checkpoint (randomly "
                        "initialised); reconstruction metrics are still reported")
            return None
        if stage in ("dfa", "families"):
            bad = [b.layer for b in blocks if not b.dfa_identity]
            if bad:
                return (f"DFA is refused: hook_z of layer {bad[0]} is not Σ_s pattern · hook_v (an attention variant "
                        "DFA cannot split)")
            return None
        if stage == "rdfa":
            why = self.refusal("dfa", layer)
            if why:
                return why.replace("DFA is", "RDFA is")
            for b in blocks:
                if not b.attn_in_known:
                    return (f"RDFA is refused: the value input of layer {b.layer} is neither the residual stream nor "
                            "ln1 of it; plain DFA is still exact")
                if b is not blocks[-1] and not b.additive:
                    return (f"RDFA is refused: block {b.layer} does not add its outputs to the residual stream (a "
                            "post-norm block, e.g. BERT), so the stream does not split into components; plain DFA "
                            "is still exact")
                if b is not blocks[-1] and not b.attn_out_known:
                    return f"RDFA is refused: hook_attn_out of layer {b.layer} fits no known layout; plain DFA is exact"
            if not self.embed_hooks:
                return "RDFA is refused: the embeddings do not sum to blocks.0.hook_resid_pre; plain DFA is exact"
            return None
        if stage == "graph":  # every layer's value path, and the logits read linearly
            for needed in ("rdfa", "logit_effect"):
                why = self.refusal(needed)
                if why:
                    why = why.split(" refused", 1)[1]
                    return "a graph is refused" + why.replace("; plain DFA is still exact", "").replace(
                        "; plain DFA is exact", "")
            return None
        # logit_effect
        if self.lm_head != "linear":
            return ("logit effects are refused: the LM head is not a linear read-out of the final norm "
                    f"({self.lm_head}: e.g. an MLM transform or logit soft-capping)")
        if not self.lm_head_trained:
            return "logit effects are refused: the LM head was not in the checkpoint (randomly initialised)"
        if layer is not None:
            later = [b.layer for b in self.blocks[layer:] if not b.additive]
            if later:
                return f"logit effects are refused: block {later[0]} does not add its outputs to the residual stream"
            if not self.blocks[layer].attn_out_known:
                return f"logit effects are refused: hook_attn_out of layer {layer} fits no known layout"
        return None

    # ------------------------------------------------------------------------------------------- report

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """A human-readable report (what ``attnsae info`` prints)."""
        kv = f"{self.n_kv_heads} KV heads (grouped-query, {self.n_heads // self.n_kv_heads} query heads each)" \
            if self.n_kv_heads != self.n_heads else f"{self.n_kv_heads} KV heads (one per query head)"
        out = [f"family     {self.model_type} ({self.hf_class})",
               f"layers     {self.n_layers}   heads {self.n_heads}   {kv}   d_head {self.d_head}   d_model "
               f"{self.d_model}" + (f"   (n_heads * d_head = {self.n_heads * self.d_head} != d_model)"
                                    if self.n_heads * self.d_head != self.d_model else ""),
               f"attention  {'causal' if self.causal else 'bidirectional (encoder)'}",
               f"positions  {self.positional}"]
        thetas = sorted({b.rope_theta for b in self.blocks if b.rope_theta})
        if thetas:
            out[-1] += "   θ " + ", ".join(f"{t:g}" for t in thetas)
        windows = _runs([b.window for b in self.blocks])
        out.append("windows    " + "; ".join(f"layers {a}-{b}: {'full' if w is None else f'sliding {w}'}"
                                            if a != b else f"layer {a}: {'full' if w is None else f'sliding {w}'}"
                                            for a, b, w in windows))
        for a, b, desc in _runs([_norm_desc(bl) for bl in self.blocks]):
            out.append(f"norms      layer{'s' if a != b else ''} {a}{'-' + str(b) if a != b else ''}: {desc}")
        out.append(f"final norm {self.final_norm or 'none'}")
        head = {"linear": "linear read-out of the final norm", "nonlinear": "present, not a linear read-out of the "
                "final norm", "none": "none"}[self.lm_head]
        out.append(f"LM head    {head}" + ("" if self.lm_head_trained or self.lm_head == "none"
                                           else " (NOT in the checkpoint: randomly initialised)"))
        for stage in STAGES:
            why = self.refusal(stage)
            out.append(f"  {stage:<20} {'exact' if why is None else 'refused: ' + why}")
        return out


def _norm_desc(b: Block) -> str:
    pre = "?" if not b.attn_in_known else (f"pre {b.attn_in}" if b.attn_in else "no pre-norm")
    post = "?" if not b.attn_out_known else (f"post {b.attn_out}" if b.attn_out else "no post-norm")
    res = "additive residual" if b.additive else "normalised residual (post-LN)"
    return f"attention: {pre}, {post}; {res}"


def _runs(values: list) -> list[tuple[int, int, object]]:
    """Consecutive equal values as (first index, last index, value)."""
    out: list[tuple[int, int, object]] = []
    for i, v in enumerate(values):
        if out and out[-1][2] == v:
            out[-1] = (out[-1][0], i, v)
        else:
            out.append((i, i, v))
    return out


# ----------------------------------------------------------------------------------------------- probing


def describe(model) -> Architecture:
    """The model's :class:`Architecture`, probed once and cached on the model object."""
    arch = getattr(model, "_attnsae_architecture", None)
    if arch is None:
        arch = _probe(model)
        model._attnsae_architecture = arch
    return arch


def require(model, stage: str, layer: int | None = None) -> None:
    """Raise the stage's one-line refusal when it cannot be exact on ``model``."""
    why = describe(model).refusal(stage, layer)
    if why:
        raise AttnsaeError(why)


def _close(a: Tensor | None, b: Tensor | None, rel: float) -> bool:
    if a is None or b is None or a.shape != b.shape:
        return False
    return float((a - b).abs().max()) <= rel * float(b.abs().max()) + 1e-6


def param(module, name: str) -> Tensor | None:
    """A module's tensor attribute ``name`` (detached, float32, CPU), or None when it has none."""
    try:
        p = getattr(module, name)
    except (AttributeError, RuntimeError, ValueError):
        return None
    return p.detach().float().cpu() if isinstance(p, Tensor) else None


def _weight(module, name: str) -> Tensor | None:
    return param(getattr(module, "_original_component", module), name)


def _match_norm(x: Tensor, scale: Tensor | None, out: Tensor | None, module, rel: float) -> Norm | None:
    """The :class:`Norm` that maps ``x`` to ``out`` with the hook's frozen ``scale`` and the module's weights."""
    if scale is None or out is None or module is None:
        return None
    d = x.shape[-1]
    w, b = _weight(module, "weight"), _weight(module, "bias")
    for kind in ("RMS", "LN"):
        normed = (x - x.mean(-1, keepdim=True) if kind == "LN" else x) / scale
        for offset in (False, True):
            g = torch.ones(d) if w is None else (1 + w if offset else w)
            if _close(normed * g + (0 if b is None else b), out, rel):
                return Norm(kind, offset)
            if w is None:
                break
    return None


match_norm = _match_norm  # for the stages that freeze a norm met on a prompt (attnsae.graph.frozen)


def norm_weights(module, norm: Norm, d: int) -> tuple[Tensor, Tensor]:
    """(γ, β) of a norm module as :class:`Norm` reads it: [d] each (β zeros without a bias)."""
    w, b = _weight(module, "weight"), _weight(module, "bias")
    g = torch.ones(d) if w is None else (1 + w if norm.offset else w)
    return g, torch.zeros(d) if b is None else b


def _hf_config(model):
    hf = getattr(model, "original_model", None)
    return getattr(hf, "config", None), hf


def _windows_and_thetas(model, n_layers: int) -> tuple[list[int | None], list[float | None], str]:
    """Declared sliding windows and rotary bases per layer, and a note on partial rotary embeddings."""
    cfg, hf = _hf_config(model)
    types = getattr(cfg, "layer_types", None) or [None] * n_layers
    declared = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) is not False else None
    windows: list[int | None] = [declared if t in (None, "sliding_attention") else None for t in types]
    if hf is not None:
        attn_mods = [m for n, m in hf.named_modules() if hasattr(m, "sliding_window") and "attn" in n.lower()
                     and not any(hasattr(c, "sliding_window") for c in m.children())]
        if len(attn_mods) == n_layers:
            windows = [int(m.sliding_window) if m.sliding_window else None for m in attn_mods]
    rope = getattr(cfg, "rope_parameters", None) or {}
    types = getattr(cfg, "layer_types", None) or [None] * n_layers
    if rope and all(isinstance(v, dict) for v in rope.values()):
        thetas = [(rope.get(t) or next(iter(rope.values()))).get("rope_theta") for t in types]
        partial = next(iter(rope.values())).get("partial_rotary_factor")
    else:
        theta = rope.get("rope_theta", getattr(cfg, "rope_theta", None))
        thetas = [theta] * n_layers
        partial = rope.get("partial_rotary_factor", getattr(cfg, "rotary_pct", None))
    return windows, thetas, f" (partial, {partial:.0%} of each head)" if partial and partial < 1 else ""


def _checkpoint_has_head(model) -> bool:
    """Whether the LM head was in the checkpoint (else transformers initialised it at random): every parameter of the
    head (the HF model's parameters outside its base model, tied ones excepted: an MLM head's transform and bias, a
    causal LM's untied ``lm_head``) is a checkpoint tensor, found by name or by shape and first row (names differ
    between families). Tied embeddings alone prove nothing: an encoder saved without its MLM head ties its decoder
    to the (loaded) embeddings but gets a random transform."""
    from safetensors import safe_open

    cfg, hf = _hf_config(model)
    folder = Path(str(getattr(cfg, "_name_or_path", "") or getattr(model.cfg, "model_name", "")))
    if hf is None or not folder.is_dir():
        return True  # a hub model: trust its declared architecture
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    if getattr(head, "weight", None) is None:
        return False
    files = _checkpoint_files(folder)
    if files is None:
        return True  # not safetensors: cannot tell, trust it
    prefix = getattr(hf, "base_model_prefix", "") + "."
    params = [(n, p) for n, p in hf.named_parameters() if not n.startswith(prefix)]  # tied weights appear once
    for name, param in params:
        if any(k == name or k.endswith("." + name) for k in files):
            continue
        first = param.detach().reshape(param.shape[0], -1)[:1].float().cpu()
        found = False
        for key, f in files.items():
            with safe_open(str(f), "pt") as fh:
                sl = fh.get_slice(key)
                if tuple(sl.get_shape()) == tuple(param.shape) and torch.equal(
                        sl[:1].float().reshape(1, -1), first):
                    found = True
                    break
        if not found:
            return False
    return True


def _checkpoint_files(folder: Path) -> dict[str, Path] | None:
    """Tensor name -> the safetensors file holding it, or None without safetensors files."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.exists():
        return {k: folder / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    out: dict[str, Path] = {}
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as fh:
            out |= {k: f for k in fh.keys()}
    return out or None


@torch.no_grad()
def _probe(model) -> Architecture:
    from attnsae.models.hooks import capture, kv_of_head

    c = model.cfg
    L, P = int(c.n_layers), max(2, min(PROBE_LEN, int(c.n_ctx)))
    dtype = next(model.parameters()).dtype
    rel = 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2
    g = torch.Generator().manual_seed(0)
    hi = min(int(c.d_vocab), len(model.tokenizer)) if model.tokenizer is not None else int(c.d_vocab)
    tokens = torch.randint(min(100, hi - 1), hi, (1, P), generator=g)
    from attnsae.corpus import bos_token_id

    tokens[0, 0] = bos_token_id(model.tokenizer)

    names = ["hook_embed", "hook_pos_embed", "ln_final.hook_in", "ln_final.hook_scale", "ln_final.hook_out",
             f"blocks.{L - 1}.hook_resid_post"]
    for l in range(L):
        names += [f"blocks.{l}.{n}" for n in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "ln1.hook_scale",
                                             "ln1.hook_out", "ln1_post.hook_in", "ln1_post.hook_scale",
                                             "ln1_post.hook_out", "attn.hook_v", "attn.hook_pattern", "attn.hook_z")]
    h = {k: v[0] for k, v in capture(model, tokens, names).items()}
    out = model(tokens.to(next(model.parameters()).device))  # what the model returns (after any soft-capping)
    logits = out.detach().float().cpu()[0] if isinstance(out, Tensor) and out.ndim == 3 else None

    windows, thetas, partial = _windows_and_thetas(model, L)
    causal = True
    blocks = []
    for l in range(L):
        get = lambda n: h.get(f"blocks.{l}.{n}")  # noqa: E731
        attn = model.blocks[l].attn
        W_V, W_O = param(attn, "W_V"), param(attn, "W_O")
        b_V, b_O = param(attn, "b_V"), param(attn, "b_O")
        x, v, A, z = get("hook_resid_pre"), get("attn.hook_v"), get("attn.hook_pattern"), get("attn.hook_z")
        n_kv, d_model, d_head = W_V.shape
        H = W_O.shape[0]
        z = z.reshape(P, H, d_head)
        bV = torch.zeros(n_kv, d_head) if b_V is None else b_V.reshape(n_kv, d_head)

        def v_of(inp: Tensor) -> Tensor:
            return torch.einsum("sm,gmd->sgd", inp, W_V) + bV

        ln1 = getattr(model.blocks[l], "ln1", None)
        attn_in: Norm | None = None
        in_known = _close(v_of(x), v, rel)
        if not in_known:
            attn_in = _match_norm(x, get("ln1.hook_scale"), get("ln1.hook_out"), ln1, rel)
            in_known = attn_in is not None and _close(v_of(get("ln1.hook_out")), v, rel)
            attn_in = attn_in if in_known else None
        y = z.reshape(P, -1) @ W_O.reshape(-1, W_O.shape[-1]) + (0 if b_O is None else b_O)
        ao = get("hook_attn_out")
        attn_out: Norm | None = None
        out_known = _close(y, ao, rel)
        if not out_known and get("ln1_post.hook_scale") is not None:
            attn_out = _match_norm(y, get("ln1_post.hook_scale"), ao, getattr(model.blocks[l], "ln1_post", None), rel)
            out_known = attn_out is not None
        nxt = h.get(f"blocks.{l + 1}.hook_resid_pre") if l + 1 < L else h.get(f"blocks.{l}.hook_resid_post")
        mlp = get("hook_mlp_out")
        additive = mlp is not None and _close(x + ao + mlp, nxt, rel)
        dfa_ok = _close(torch.einsum("hts,shd->thd", A, v[:, kv_of_head(H, n_kv)]), z, rel)
        if bool((A.triu(1).abs() > 0).any()):
            causal = False
        reach = (torch.arange(P)[:, None] - torch.arange(P)[None]).abs()
        longest = int(reach[(A.abs() > 0).any(0)].max())  # the longest distance attended on the probe
        win = longest + 1 if longest + 1 < P else windows[l] if windows[l] and windows[l] >= P else None
        blocks.append(Block(l, attn_in, in_known, attn_out, out_known, additive, dfa_ok, win, thetas[l]))

    embed_hooks: list[str] = []
    r0 = h.get("blocks.0.hook_resid_pre")
    if _close(h.get("hook_embed"), r0, rel):
        embed_hooks = ["hook_embed"]
    elif "hook_pos_embed" in h and _close(h["hook_embed"] + h["hook_pos_embed"], r0, rel):
        embed_hooks = ["hook_embed", "hook_pos_embed"]

    W_U = model.W_U.detach().float().cpu() if hasattr(model, "W_U") else None
    b_U = param(model, "b_U")
    final_in, final_out = h.get("ln_final.hook_in"), h.get("ln_final.hook_out")
    final = _match_norm(final_in, h.get("ln_final.hook_scale"), final_out, getattr(model, "ln_final", None), rel) \
        if final_in is not None else None
    if W_U is None or logits is None:
        lm_head = "none"
    elif (final is not None and _close(final_in, h.get(f"blocks.{L - 1}.hook_resid_post"), rel)
          and _close(final_out @ W_U + (0 if b_U is None else b_U), logits, rel)):
        lm_head = "linear"
    else:
        lm_head = "nonlinear"

    cfg, hf = _hf_config(model)
    if thetas[0] is not None or "blocks.0.attn.hook_rot_q" in model.hook_dict:
        positional = "rotary" + partial
    elif "hook_pos_embed" in h and float(h["hook_pos_embed"].abs().max()) > 0:
        positional = "learned absolute"
    else:
        positional = "none"
    return Architecture(
        model_type=str(getattr(cfg, "model_type", "?")), hf_class=type(hf).__name__ if hf is not None else "?",
        n_layers=L, d_model=int(c.d_model), n_heads=int(c.n_heads),
        n_kv_heads=int(getattr(c, "n_key_value_heads", None) or c.n_heads), d_head=int(c.d_head),
        d_vocab=int(c.d_vocab), n_ctx=int(c.n_ctx), causal=causal, positional=positional, embed_hooks=embed_hooks,
        final_norm=final, lm_head=lm_head, lm_head_trained=lm_head == "none" or _checkpoint_has_head(model),
        blocks=blocks, probe_len=P,
    )
