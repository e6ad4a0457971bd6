"""One prompt through a model and its attention SAEs, captured once, and every question the Circuit Explorer asks
of it: active features per token, DFA, lazy recursive DFA, logit effects, attention rows, interventions, and the
difference between two prompts.

A :class:`PromptSession` runs the model once (an :class:`~attnsae.attribution.rdfa.RDFATracer` for the deepest SAE
layer, with every other SAE upstream and the logits kept), so a click costs no forward pass: DFA reads the captured
values and patterns, RDFA expands one node at a time. Attention patterns, the one capture that grows with the
prompt's length squared, are kept only while they fit in ``pattern_bytes`` (see :class:`~attnsae.attribution.rdfa.
Patterns`); everything else is linear in the prompt's length. Interventions (several feature and head edits at
once: zero, scale, set, patch from a second prompt) and greedy generation with them run the model again through
:mod:`attnsae.evals.interventions`, with the error terms kept, so only the edits change anything.

Each method returns plain JSON-ready data (dicts and lists of Python numbers); shapes: ``S`` tokens (BOS included at
position 0), ``H`` heads, ``d_sae`` features.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

from attnsae.attribution.inputs import check_features, tokenize
from attnsae.attribution.logits import logit_effect, logit_effect_matrix
from attnsae.models.architecture import describe
from attnsae.attribution.rdfa import DEFAULT_PATTERN_BYTES, RDFATracer
from attnsae.attribution.rdfa_tree import RDFANode
from attnsae.errors import AttnsaeError
from attnsae.evals.interventions import Edit, check_edits, feature_changes, generate, run_edited
from attnsae.evals.splice import saes_by_layer
from attnsae.models import model_name, n_ctx
from attnsae.sae.model import SAE
from attnsae.serve.graph_view import GraphCache

ORDERS = ("act", "dfa", "logit")
COMPARE_TOL = 1e-5  # relative: differences below this share of a layer's largest activation are float rounding


def _predictions(logits: Tensor, k: int, decode) -> list[dict]:
    """Top-``k`` next tokens of one logit row [d_vocab]: token, text, logit, probability."""
    probs = logits.float().softmax(-1)
    top = logits.topk(min(k, len(logits)))
    return [{"token": int(t), "str": decode([int(t)]), "logit": float(v), "prob": float(probs[t])}
            for v, t in zip(top.values, top.indices)]


def check_prompt_length(model, prompt: str, prepend_bos: bool = True) -> int:
    """The prompt's token count (with BOS), or a one-line refusal past the model's context."""
    n = len(model.tokenizer(prompt, add_special_tokens=False)["input_ids"]) + int(prepend_bos)
    if n > n_ctx(model):
        raise AttnsaeError(f"the prompt has {n} tokens but {model_name(model)} reads at most {n_ctx(model)}: "
                           f"shorten it")
    return n


class PromptSession:
    """The explorer's view of one prompt. ``saes``: a list (each at its own layer) or ``{layer: SAE}``."""

    def __init__(self, model, saes: Sequence[SAE] | Mapping[int, SAE], prompt: str,
                 pattern_bytes: int = DEFAULT_PATTERN_BYTES) -> None:
        self.model = model
        self.saes = saes_by_layer(model, saes)
        if not self.saes:
            raise AttnsaeError("no SAEs given: the explorer needs at least one SAE directory")
        top = max(self.saes)
        first = self.saes[top]
        check_prompt_length(model, prompt, first.cfg.prepend_bos)
        tokens, _ = tokenize(model, prompt, first.cfg.prepend_bos)
        self.tokens = tokens[0]  # int64 [S]
        self.tracer = RDFATracer(model, first, self.tokens, {l: s for l, s in self.saes.items() if l < top},
                                 keep_logits=True, pattern_bytes=pattern_bytes, dfa_fallback=True,
                                 lazy_components=True)
        arch = describe(model)  # what the model cannot support is said, as `attribute` says it, not refused whole
        self.rdfa_refused = self.tracer.refused
        self.logits_refused = {l: arch.refusal("logit_effect", l) for l in self.saes}
        self.S = len(self.tokens)
        self.token_strs = self.tracer.token_strs
        self.logits = self.tracer.logits  # [S, d_vocab]
        self.decode = model.tokenizer.decode
        self.graphs = GraphCache(model, self.saes, self.tokens)

    @property
    def layers(self) -> list[int]:
        return sorted(self.saes)

    def _layer(self, layer: int) -> int:
        if layer not in self.saes:
            raise AttnsaeError(f"layer {layer} has no SAE here: the SAEs read layers "
                               f"{', '.join(map(str, self.layers))}")
        return layer

    def _position(self, position: int, what: str = "position") -> int:
        if not 0 <= position < self.S:
            raise AttnsaeError(f"{what} {position} is out of range: the prompt has positions 0..{self.S - 1}")
        return position

    def acts(self, layer: int) -> Tensor:
        """Feature activations of the SAE at ``layer``: [S, d_sae]."""
        return self.tracer.saes[self._layer(layer)].act

    # ------------------------------------------------------------------------------------------- features

    def features(self, order: str = "act", k: int = 8, layers: Sequence[int] | None = None) -> dict:
        """Per token, the active features of each layer's SAE, ranked by ``order``:

        * ``act``: the activation ``f_j[t]``;
        * ``dfa``: |DFA total| = |pre_j[t] − bias_j|, what attention wrote into the feature;
        * ``logit``: |the feature's direct effect on the logit of the model's top prediction at t|, i.e.
          ``f_j[t]·(out(d_j W_O) · γ/σ_final[t]) · W_U[:, top]`` with the final norm frozen (a post-attention norm's
          scale, in sandwich-norm models, is left out).

        Each entry has all three numbers; up to ``k`` per token and layer."""
        if order not in ORDERS:
            raise AttnsaeError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
        layers = self.layers if layers is None else [self._layer(l) for l in dict.fromkeys(layers)]  # each once
        top1 = self.logits.argmax(-1)  # [S]
        scale = self.tracer.final_scale if self.tracer.final_scale is not None else torch.ones(self.S)
        rows: list[list[dict]] = [[] for _ in range(self.S)]
        for l in layers:
            sl = self.tracer.saes[l]
            pos, feat = sl.act.nonzero(as_tuple=True)  # the active entries, position-major
            if len(feat) == 0:
                continue
            uniq, inv = feat.unique(return_inverse=True)
            act = sl.act[pos, feat]
            if self.logits_refused[l]:
                if order == "logit":
                    raise AttnsaeError(self.logits_refused[l])
                logit = torch.full_like(act, float("nan"))
            else:
                tops, top_of = top1.unique(return_inverse=True)  # each predicted token once
                eff = logit_effect_matrix(self.model, sl.sae, uniq.tolist(), tokens=tops.tolist())  # [n_uniq, n_top]
                logit = act * eff[inv, top_of[pos]] / scale[pos]
            scores = {"act": act, "dfa": (sl.pre[pos, feat] - sl.bias[feat]), "logit": logit}
            key = scores[order].abs() if order != "act" else act
            idx = key.argsort(descending=True, stable=True)
            idx = idx[pos[idx].argsort(stable=True)]  # grouped by position, best first within each
            counts = torch.bincount(pos, minlength=self.S).tolist()
            cols = [feat[idx].tolist(), act[idx].tolist(), scores["dfa"][idx].tolist(),
                    [None if v != v else v for v in scores["logit"][idx].tolist()]]  # NaN (refused): null
            start = 0
            for t, n in enumerate(counts):
                rows[t] += [{"layer": l, "feature": f, "act": a, "dfa": d, "logit": g}
                            for f, a, d, g in zip(*(c[start:start + min(n, k)] for c in cols))]
                start += n
        preds = self.logits.topk(min(3, self.logits.shape[-1]), dim=-1)
        probs = self.logits.softmax(-1).gather(-1, preds.indices)
        predictions = [[{"token": int(t), "str": self.decode([int(t)]), "prob": float(p)}
                        for t, p in zip(ti, pi)] for ti, pi in zip(preds.indices, probs)]
        return {"tokens": self.tokens.tolist(), "token_strs": self.token_strs, "layers": layers, "order": order,
                "rows": rows, "predictions": predictions}

    # ------------------------------------------------------------------------------------------- attribution

    def dfa(self, layer: int, feature: int, position: int) -> dict:
        """DFA of one feature at one position: terms [S, H] (source × head), their sums by source and by head, and
        the identity ``pre_act = dfa_total + bias`` with its error."""
        sl = self.tracer.saes[self._layer(layer)]
        (feature,) = check_features(sl.sae, feature)
        self._position(position)
        terms = self.tracer.dfa_terms(layer, feature, position)  # [S, H]
        total, pre, bias = float(terms.sum()), float(sl.pre[position, feature]), float(sl.bias[feature])
        return {"layer": layer, "feature": feature, "position": position, "act": float(sl.act[position, feature]),
                "pre_act": pre, "bias": bias, "dfa_total": total, "n_heads": terms.shape[1],
                "token_strs": self.token_strs, "terms": terms.tolist(), "by_src": terms.sum(1).tolist(),
                "by_head": terms.sum(0).tolist(), "identity_error": abs(pre - total - bias)}

    def rdfa(self, kind: str, layer: int, position: int, feature: int, coef: float = 1.0, head: int | None = None,
             source: int | None = None, top_k: int = 5, threshold: float = 0.0) -> dict:
        """One node of the recursive DFA tree expanded one level (:meth:`RDFATracer.expand`): the node, its
        children (each with the ``ref`` that expands it, when it can be) and its remainders, each largest |value|
        first, and its closure."""
        node = self.tracer.expand(kind, layer, position, feature, coef, head, source, top_k, threshold)
        residual = node.residual()
        by_size = sorted(node.children, key=lambda c: -abs(c.value))  # a head-source node lists components first
        return {"node": self._node(node), "children": [self._node(c) for c in by_size],
                "remainders": dict(sorted(node.remainders.items(), key=lambda kv: -abs(kv[1]))), "residual": residual,
                "relative_residual": abs(residual) / max(node.scale(), 1e-30)}

    def _node(self, n: RDFANode) -> dict:
        d = {k: v for k, v in n.to_dict().items() if k not in ("children", "remainders")}
        # a feature always lists its (source, head) terms; a head-source term splits further unless RDFA is refused
        expandable = n.kind == "feature" or (n.kind == "head_source" and not self.tracer.refused)
        d["expandable"] = expandable
        if expandable:
            d["ref"] = {k: d[k] for k in ("kind", "layer", "position", "feature", "coef", "head", "source") if k in d}
        return d

    def effect(self, layer: int, feature: int, position: int, k: int = 10) -> dict:
        """The feature's direct logit effect (top and bottom tokens) and the model's top-``k`` next-token
        predictions at ``position``."""
        sl = self.tracer.saes[self._layer(layer)]
        (feature,) = check_features(sl.sae, feature)
        self._position(position)
        refused = self.logits_refused[layer]
        return {"layer": layer, "feature": feature, "position": position, "act": float(sl.act[position, feature]),
                "logit_effect": None if refused else logit_effect(self.model, sl.sae, feature, k).to_dict(),
                "logit_effect_refused": refused,
                "predictions": _predictions(self.logits[position], k, self.decode)}

    def attention(self, layer: int, head: int, dest: int) -> dict:
        """Row ``dest`` of head ``head``'s attention pattern at ``layer`` (any layer; those past the deepest SAE's are
        captured when first asked for): [S]."""
        n = int(self.model.cfg.n_layers)
        if not 0 <= layer < n:
            raise AttnsaeError(f"layer {layer} is out of range: the model has layers 0..{n - 1}")
        if not 0 <= head < self.tracer.n_heads:
            raise AttnsaeError(f"head {head} is out of range: the model has heads 0..{self.tracer.n_heads - 1}")
        self._position(dest, "dest")
        return {"layer": layer, "head": head, "dest": dest,
                "weights": self.tracer.A.row(layer, dest)[head].tolist()}

    # ------------------------------------------------------------------------------------------- interventions

    def _single_token(self, text: str | int) -> int:
        """A token id, or the id of a single-token string."""
        if isinstance(text, int):
            if not 0 <= text < int(self.model.cfg.d_vocab):
                raise AttnsaeError(f"token id {text} is out of range: the vocabulary has ids "
                                   f"0..{self.model.cfg.d_vocab - 1}")
            return text
        ids = self.model.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise AttnsaeError(f"{text!r} is {len(ids)} tokens, not one: give single-token strings for a logit "
                               f"difference (mind the leading space)")
        return int(ids[0])

    def _other_tokens(self, other: str | None) -> Tensor | None:
        """Prompt B's tokens [S_B] (BOS as this prompt's), or None."""
        if other is None:
            return None
        bos = self.saes[max(self.saes)].cfg.prepend_bos
        check_prompt_length(self.model, other, bos)
        return tokenize(self.model, other, bos)[0][0]

    def intervene(self, edits: Sequence[Edit], at: int | None = None, logit_tokens: Sequence[str | int] | None = None,
                  k: int = 10, other: str | None = None) -> dict:
        """Run the model again with ``edits`` (:func:`attnsae.evals.interventions.run_edited`: features and heads,
        zero / scale / set / patch from ``other``, prompt B), every SAE spliced in with its error term kept; compare
        the logits at ``at`` (default: the last token) and every SAE's features with the clean run."""
        at = self.S - 1 if at is None else self._position(at, "at")
        pair = [self._single_token(t) for t in logit_tokens] if logit_tokens else None
        run = run_edited(self.model, self.saes, self.tokens, edits, self._other_tokens(other))
        after, before = run.logits, self.logits  # [S, d_vocab]
        changes, tolerance = feature_changes({l: self.acts(l) for l in self.saes}, run.feature_acts, k, COMPARE_TOL)
        diff = None
        if pair:
            diff = {"tokens": [self.decode([i]) for i in pair], "ids": pair,
                    "before": float(before[at, pair[0]] - before[at, pair[1]]),
                    "after": float(after[at, pair[0]] - after[at, pair[1]])}
        return {"edits": [e.to_dict() for e in run.edits], "at": at, "at_token": self.token_strs[at],
                "before": _predictions(before[at], k, self.decode), "after": _predictions(after[at], k, self.decode),
                "logit_diff": diff, "max_abs_logit_change": float((after[at] - before[at]).abs().max()),
                "downstream": changes, "tolerance": tolerance}

    def generate(self, edits: Sequence[Edit] = (), n: int = 10, other: str | None = None,
                 max_seconds: float | None = None) -> dict:
        """``n`` tokens generated greedily after the prompt, clean and with ``edits`` applied at every step
        (:func:`attnsae.evals.interventions.generate`); with ``max_seconds``, each of the two runs stops adding
        tokens past half of it (``n`` in the answer: how many both have, ``stopped``: why fewer than asked)."""
        source = self._other_tokens(other)
        checked = check_edits(self.model, self.saes, edits, self.S, None if source is None else len(source))
        half = None if max_seconds is None else max_seconds / 2
        clean = getattr(self, "_clean_continuation", None)  # greedy: the longest one so far starts every shorter one
        if clean is None or len(clean) < n:
            clean, kept = generate(self.model, self.tokens, n, max_seconds=half), clean
            if kept is None or len(clean) > len(kept):
                self._clean_continuation = clean
        clean = clean[:n]
        edited = (generate(self.model, self.tokens, len(clean), self.saes, checked, source, max_seconds=half)
                  if checked else clean)
        asked, n = n, min(len(clean), len(edited))
        clean, edited = clean[:n], edited[:n]
        differ = (clean != edited).nonzero()
        return {"n": n, "asked": asked, "stopped": None if n == asked else
                f"the time limit: each run stops adding tokens after {half:g} s, so {n} of {asked} tokens",
                "prompt_tokens": self.S, "edits": [e.to_dict() for e in checked],
                "clean": {"tokens": clean.tolist(), "strs": [self.decode([t]) for t in clean.tolist()]},
                "edited": {"tokens": edited.tolist(), "strs": [self.decode([t]) for t in edited.tolist()]},
                "first_difference": int(differ[0]) if len(differ) else None}

    def graph(self, target: list[str] | None = None, mlp: str = "leaf", node_threshold: float = 0.8,
              edge_threshold: float = 0.98) -> dict:
        """The pruned attention graph of ``target`` on this prompt (:mod:`attnsae.serve.graph_view`)."""
        return self.graphs.answer(target, mlp, node_threshold, edge_threshold)

    def edge(self, target: list[str] | None, mlp: str, source: str, dest: str) -> dict:
        """Why the head of one graph edge attended (:meth:`attnsae.serve.graph_view.GraphCache.edge`)."""
        return self.graphs.edge(target, mlp, source, dest)

    def compare(self, other: PromptSession, k: int = 10) -> dict:
        """Per position (up to the shorter prompt), the ``k`` largest feature differences ``other − self`` over all
        SAE layers, leaving out those within float rounding: ``|delta| <= COMPARE_TOL · max(1, largest activation of
        the layer in either prompt)`` (the answer states each layer's tolerance)."""
        n = min(self.S, other.S)
        rows: list[list[dict]] = [[] for _ in range(n)]
        tolerance = {}
        for l in self.layers:
            a, b = self.acts(l)[:n], other.acts(l)[:n]  # [n, d_sae]
            delta = b - a
            tol = COMPARE_TOL * max(1.0, float(a.abs().max()), float(b.abs().max()))
            tolerance[l] = tol
            top = delta.abs().topk(min(k, delta.shape[1]), dim=1)
            for t in range(n):
                rows[t] += [{"layer": l, "feature": int(j), "a": float(a[t, j]), "b": float(b[t, j]),
                             "delta": float(delta[t, j])} for v, j in zip(top.values[t], top.indices[t]) if v > tol]
        for r in rows:
            r.sort(key=lambda d: -abs(d["delta"]))
            del r[k:]
        return {"a": {"tokens": self.tokens.tolist(), "token_strs": self.token_strs},
                "b": {"tokens": other.tokens.tolist(), "token_strs": other.token_strs}, "n_positions": n,
                "rows": rows, "tolerance": tolerance}
