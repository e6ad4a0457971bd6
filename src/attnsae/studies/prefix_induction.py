"""Why several induction heads? Long- vs short-prefix induction (PAPER_NOTES §7), in one study.

:func:`prefix_induction` runs, in order:

1. the synthetic sweep for every head (:mod:`attnsae.studies.prefix_sweep`); the *induction heads* are those whose
   score reaches ``induction_threshold`` at some prefix length (within ``layer`` when given);
2. the real-text study of those heads with its prefix-breaking intervention (:mod:`attnsae.studies.prefix_text`);
3. with an SAE: its induction features, which head carries each one's DFA by prefix length
   (:mod:`attnsae.studies.prefix_features`), and specificity plots of the commonest ones against two proxies
   (:mod:`attnsae.studies.specificity`);

and returns the result as plain data; :func:`attnsae.jobs.studies.run_prefix_induction` writes it into one folder
(:mod:`attnsae.views.prefix_report`).

A head's verdict is a stated rule: on text, the share of its attention kept when the longer prefix is broken
(``retained = after / before``); a head keeping less than ``long_cutoff`` (half) is **long-prefix**, else
**short-prefix**. Without text pairs for a head, its sweep ratio ``score(k=1) / max_k score(k)`` decides instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnsae.errors import AttnsaeError
from attnsae.models import check_tokens, model_name
from attnsae.sae.checks import check_sae
from attnsae.sae.model import SAE
from attnsae.studies.patterns import head_name
from attnsae.studies.prefix_features import carrier_counts, feature_prefix_view, induction_features
from attnsae.studies.prefix_sweep import Sweep, TokenClasses, prefix_sweep
from attnsae.studies.prefix_text import text_intervention
from attnsae.studies.specificity import followed_by, proxy_mask, repeated_prefix, specificity


def induction_heads(sweep: Sweep, threshold: float, layer: int | None = None) -> list[tuple[int, int]]:
    """Heads whose sweep score reaches ``threshold`` at some prefix length (in ``layer`` only, when given)."""
    best = sweep.mean.amax(0)  # [n_layers, n_heads]
    return [(l, h) for l, h in (best >= threshold).nonzero().tolist() if layer is None or l == layer]


def head_verdicts(sweep: Sweep, text: dict, heads: list[tuple[int, int]], long_cutoff: float = 0.5) -> dict:
    """Per studied head: sweep scores, text before/after and the verdict (module docstring)."""
    out = {}
    for l, h in heads:
        s = sweep.mean[:, l, h]
        t = text["heads"].get(head_name(l, h), {})
        ratio = float(s[0] / s.max().clamp_min(1e-12))
        retained = t["after"] / t["before"] if t.get("n") and t.get("before") else None
        decide = retained if retained is not None else ratio
        out[head_name(l, h)] = {
            "sweep_k1": float(s[0]), "sweep_kmax": float(s[-1]), "sweep_ratio": ratio, "text_n": t.get("n", 0),
            "text_before": t.get("before"),
            "text_before_ci95": t.get("before_ci95"), "text_after": t.get("after"),
            "text_after_ci95": t.get("after_ci95"),
            "retained": retained,
            "kind": "long-prefix" if decide < long_cutoff else "short-prefix",
            "decided_by": "text" if retained is not None else "sweep",
        }
    return out


def _specificity_entries(view, tokens: Tensor, classes: TokenClasses, tokenizer, n_features: int,
                         progress: bool) -> list[dict]:
    """Specificity of the ``n_features`` most frequent features against both shipped proxies."""
    ranked = sorted(view.features, key=lambda f: -view.summary["features"][str(f)]["n_firings"])[:n_features]
    out = []
    rep = repeated_prefix(2, classes.canon)
    rep_mask = proxy_mask(tokens, rep, progress) if ranked else None
    for f in ranked:
        j = view.features.index(f)
        acts = view.acts[:, :, j]
        proxies = [(rep, rep_mask)]
        cls = view.peak_class.get(f, -1)
        if cls >= 0:
            ids = (classes.canon == cls).nonzero().squeeze(1)
            label = tokenizer.decode([int(ids[0])])
            p = followed_by(set(ids.tolist()), classes.canon, label)
            proxies.insert(0, (p, proxy_mask(tokens, p, progress)))
        for p, mask in proxies:
            out.append({"feature": f, "proxy": p.name, "description": p.description} | specificity(acts, mask))
    return out


def prefix_induction(model, tokens: Tensor, sae: SAE | None = None, layer: int | None = None, n_seqs: int = 400,
                     seq_len: int = 128, max_prefix: int = 9, seed: int = 0, threshold: float = 0.3,
                     induction_threshold: float = 0.3, max_pairs: int = 2000, max_firings: int = 2000,
                     max_features: int = 32, n_specificity: int = 4, batch_size: int = 32,
                     progress: bool = True) -> dict:
    """Run the study (module docstring) and return its plain-data result: ``summary``, ``sweep``, ``text``,
    ``features`` (None without an SAE) and ``specificity``.

    tokens: int64 ``[n_contexts, S]`` real text with BOS at 0 (e.g. the corpus validation split). ``sae``: an
    attention SAE of ``model`` (its induction features are studied; ``layer``, when given, must agree with it).
    The studied heads are the induction heads of every layer, or of ``layer`` only when it is given.
    ``threshold``: attention that makes a text pair; ``induction_threshold``: sweep score that makes an induction
    head; ``max_pairs``: pairs intervened on; ``max_firings`` / ``max_features``: per induction feature, and how
    many features; ``n_specificity``: features given specificity plots.

    ``summary`` is ``{"model", "layer", "induction_heads": [names], "heads": {name: verdict row}, "long_prefix",
    "short_prefix": [names], "n_induction_features", ...}``.
    """
    tokens = check_tokens(model, tokens, min_len=4).cpu()
    heads_layer = layer  # only an explicit layer restricts the studied heads; an SAE alone does not
    if sae is not None:
        layer = check_sae(model, sae, layer)
        if layer == 0:
            raise AttnsaeError("the SAE reads layer 0, which cannot hold induction features (induction needs an "
                               "earlier layer's previous-token information); give an SAE of a layer that has "
                               "induction heads")
    elif layer is not None and not 0 <= layer < model.cfg.n_layers:
        raise AttnsaeError(f"layer {layer} does not exist: the model has layers 0..{model.cfg.n_layers - 1}")
    classes = TokenClasses.of(model)
    sweep = prefix_sweep(model, n_seqs, seq_len, max_prefix, seed, batch_size, classes, progress)
    heads = induction_heads(sweep, induction_threshold, heads_layer)
    if sae is not None and not any(l == layer for l, _ in heads):
        found = ", ".join(head_name(l, h) for l, h in induction_heads(sweep, induction_threshold)) or "none"
        raise AttnsaeError(f"the SAE reads layer {layer}, which has no induction head (no head there reaches "
                           f"{induction_threshold} in the synthetic sweep; induction heads: {found}); give an SAE of "
                           "a layer with induction heads")
    fallback = not heads
    if fallback:  # no head reaches the threshold: study the three best, and say so
        best = sweep.mean.amax(0)
        if heads_layer is not None:
            best = torch.where(torch.arange(best.shape[0])[:, None] == heads_layer, best, torch.tensor(-1.0))
        top = best.flatten().topk(min(3, best.numel())).indices
        heads = [(int(i) // best.shape[1], int(i) % best.shape[1]) for i in top]
    text = text_intervention(model, tokens, heads, classes, threshold, max_pairs, max_prefix, seed, batch_size,
                             progress)
    verdicts = head_verdicts(sweep, text, heads)
    summary = {
        "model": model_name(model), "layer": layer, "n_contexts": len(tokens), "context_size": tokens.shape[1],
        "sweep": {"n_seqs": n_seqs, "seq_len": seq_len, "max_prefix": max_prefix, "seed": seed},
        "induction_threshold": induction_threshold, "pair_threshold": threshold,
        "induction_heads": [] if fallback else [head_name(l, h) for l, h in heads],
        "studied_heads": [head_name(l, h) for l, h in heads],
        "heads": verdicts,
        "long_prefix": [n for n, v in verdicts.items() if v["kind"] == "long-prefix"],
        "short_prefix": [n for n, v in verdicts.items() if v["kind"] == "short-prefix"],
    }
    features, spec = None, []
    if sae is not None:
        ind, stats = induction_features(model, sae, tokens, classes.canon, progress=progress)
        view = feature_prefix_view(model, sae, tokens, ind[:max_features], classes.canon, max_prefix, max_firings,
                                   progress=progress)
        features = view.summary | {"induction_features": ind, "n_live": len(stats),
                                   "family_stats": {str(f): stats[f] for f in ind[:max_features]}}
        spec = _specificity_entries(view, tokens, classes, model.tokenizer, n_specificity, progress)
        summary["n_induction_features"] = len(ind)
        summary["carriers"] = carrier_counts(view.summary)
    return {"summary": summary, "sweep": sweep.to_dict(), "text": text, "features": features, "specificity": spec}
