"""What a feature means and where it appears, for the explorer: feature cards, feature search and user labels (the
glue between the app and the library; the numbers come from :mod:`attnsae.studies.feature_cards`,
:mod:`attnsae.attribution.logits` and the dashboards folder).

A card (:meth:`FeatureCards.card`) shows one feature's top activating contexts, its direct logit effect (top and
bottom tokens: :func:`attnsae.attribution.logits.logit_effect`, the one definition every view uses), its family
and its density, and says where they come from:

* a dashboards folder of these SAEs (``--dashboard``): the feature's page data, read from the folder (its top
  examples, family, density on the folder's corpus tokens); no model work but the logit effect;
* otherwise (or where the folder has no readable data for a layer) a scan of ``n_tokens`` tokens of ``corpus``
  (its validation split), run once per layer when first needed (:func:`attnsae.studies.feature_cards.card_scan`,
  holding the model's lock for its duration); a card then explains its feature's top activations as the
  dashboards do (:func:`~attnsae.studies.feature_cards.top_examples`) and reads its family from them.

Search (:meth:`FeatureCards.search`) finds features by name (``L1/114``), by label, or by a token among their top
logits or their top-activating tokens (from a dashboards folder the commonest one, its feature list's column; from
the scan the five commonest), the token matched as the families match tokens (case and one leading space
ignored). Labels live in a :class:`attnsae.views.labels.Labels` file. Every answer is bounded: a few contexts, ten
logits, at most :data:`MAX_RESULTS` search results.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import Tensor

from attnsae.attribution.inputs import check_features
from attnsae.attribution.logits import DEFINITION, logit_effect
from attnsae.corpus import load_corpus
from attnsae.errors import AttnsaeError
from attnsae.models import n_ctx
from attnsae.models.architecture import describe
from attnsae.sae.checks import cpu_sae
from attnsae.sae.model import SAE
from attnsae.studies import families as fam
from attnsae.studies.examples import DashboardConfig, vocab_strings
from attnsae.studies.feature_cards import card_scan, top_dest_tokens, top_examples, top_logit_tokens
from attnsae.studies.scan import FeatureScan
from attnsae.views.dashboards import display_example, read_corpus, read_feature, read_summary
from attnsae.serve.guards import ModelLock
from attnsae.views.labels import MAX_LABEL_CHARS, Labels

CARD_TOKENS = 8192  # tokens a scan reads when no dashboards folder is given (attnsae explore --card-tokens)
CARD_CONTEXT = 128  # tokens per context of that scan (less on a model with a shorter context)
N_CONTEXTS = 5  # top activating contexts on a card
N_LOGITS = 10  # top and bottom logit tokens on a card, and the top logits a search reads
N_TOP_TOKENS = 5  # top-activating tokens on a card and in search
MAX_CARDS = 512  # cards kept (least recently asked for dropped first)
MAX_RESULTS = 50  # search results
MAX_FIRES = 32  # positions listed where a search result fires on the prompt
DASHBOARD_ERRORS = (OSError, ValueError, KeyError, TypeError, IndexError)


class FeatureCards:
    """Cards, search and labels over ``by_layer`` ``{layer: SAE}`` of ``model``. ``lock``: the model's lock (taken
    only around model work); ``site`` / ``dashboards``: the dashboards folder and its entry per layer
    (:func:`attnsae.serve.app.dashboard_of`), or None; ``labels``: the labels file."""

    def __init__(self, model, by_layer: Mapping[int, SAE], lock: ModelLock, labels: Labels,
                 site: Path | None = None, dashboards: Mapping[int, dict] | None = None, corpus: str = "stdlib",
                 n_tokens: int = CARD_TOKENS) -> None:
        self.model, self.lock, self.labels = model, lock, labels
        self.saes = dict(by_layer)
        self.site, self.dashboards = site, dict(dashboards or {})
        self.corpus, self.n_tokens = corpus, n_tokens
        arch = describe(model)
        self.logits_refused = {l: arch.refusal("logit_effect", l) for l in self.saes}
        self.no_dashboard: dict[int, str] = {}  # layers whose dashboards data could not be read: why
        self._cards: OrderedDict[tuple[int, int], dict] = OrderedDict()
        self._scans: dict[int, FeatureScan] = {}
        self._index: dict[int, tuple[Tensor | None, Tensor]] = {}
        self._tokens: Tensor | None = None
        self._vocab: list[str] | None = None
        self._canon: Tensor | None = None
        self._state = threading.Lock()  # the caches above
        self._loading = threading.Lock()  # the scan's tokens, read once

    # ------------------------------------------------------------------------------------------- inputs

    def _feature(self, layer: int, feature: int) -> SAE:
        if layer not in self.saes:
            raise AttnsaeError(f"layer {layer} has no SAE here: the SAEs read layers {', '.join(map(str, self.saes))}")
        check_features(self.saes[layer], feature)
        return self.saes[layer]

    def vocab(self) -> list[str]:
        """Every token's text: [d_vocab] (decoded once)."""
        if self._vocab is None:
            self._vocab = vocab_strings(self.model)
        return self._vocab

    def _canonical(self) -> Tensor:
        if self._canon is None:
            self._canon = fam.canonical_ids(self.vocab())
        return self._canon

    def scan_tokens(self) -> Tensor:
        """The scan's contexts: int64 [n_contexts, S] of the corpus's validation split (read once)."""
        with self._loading:
            if self._tokens is None:
                first = self.saes[min(self.saes)]
                size = min(CARD_CONTEXT, n_ctx(self.model))
                rows = -(-self.n_tokens // size)
                corpus = load_corpus(self.model.tokenizer, self.corpus, "validation", size, first.cfg.prepend_bos,
                                     max_tokens=rows * size, n_ctx=n_ctx(self.model), progress=False)
                if len(corpus.tokens) == 0:
                    raise AttnsaeError(f"the {self.corpus} corpus has no validation text to scan for feature cards: "
                                       "start the explorer with --dashboard DIR")
                self._tokens = torch.from_numpy(corpus.tokens[:rows]).long()
            return self._tokens

    def _scan(self, layers: list[int]) -> None:
        """Scan the layers of ``layers`` not scanned yet, in one pass (holds the model's lock)."""
        todo = [l for l in layers if l not in self._scans]
        if not todo:
            return
        tokens = self.scan_tokens()
        with self.lock.held():
            todo = [l for l in todo if l not in self._scans]  # another request may have scanned them meanwhile
            for l, scan in zip(todo, card_scan(self.model, [cpu_sae(self.saes[l]) for l in todo], tokens)):
                self._scans[l] = scan

    def _dashboard_feature(self, layer: int, feature: int) -> tuple[dict, dict] | None:
        """The feature's dashboards data and the folder's corpus (:func:`read_corpus`), or None (no folder, or its
        data for this layer cannot be read)."""
        if layer not in self.dashboards or layer in self.no_dashboard:
            return None
        try:
            return read_feature(self.site, self.dashboards[layer]["name"], feature), read_corpus(self.site)
        except DASHBOARD_ERRORS as e:
            self.no_dashboard[layer] = f"{type(e).__name__}: {e}"[:120]
            return None

    # ------------------------------------------------------------------------------------------- cards

    def card(self, layer: int, feature: int) -> dict:
        """The card of ``feature`` at ``layer`` (module docstring): ``{"layer", "feature", "label", "family",
        "family_source", "density", "n_fired", "source": {"kind", "n_tokens", "text"}, "contexts": [EXAMPLE],
        "top_tokens": [{"token", "str", "count"}], "logits": {"top": [TOKEN], "bottom": [TOKEN], "definition"} |
        None, "logits_refused"}`` with TOKEN ``{"token", "str", "value"}``; an EXAMPLE segment has ``strs``."""
        self._feature(layer, feature)
        key = (layer, feature)
        with self._state:
            made = self._cards.get(key)
            if made is not None:
                self._cards.move_to_end(key)
        if made is None:
            made = self._make_card(layer, feature)
            with self._state:
                self._cards[key] = made
                while len(self._cards) > MAX_CARDS:
                    self._cards.popitem(last=False)
        return {**made, "label": self.labels.get(layer, feature)}

    def _make_card(self, layer: int, feature: int) -> dict:
        vocab = self.vocab()
        read = self._dashboard_feature(layer, feature)
        if read is not None:
            data, corpus = read
            examples = data["groups"][0]["examples"][:N_CONTEXTS] if data["groups"] else []
            top = [(t, c) for t, c in data["top_tokens"]]
            out = {"family": data["family"], "family_source": "the dashboards' label (the DFA of its top examples)",
                   "density": data["density"], "n_fired": data["n_fired"],
                   "source": {"kind": "dashboard", "n_tokens": int(corpus["n_tokens"]),
                              "text": f"the dashboards folder {self.site.name}: {int(corpus['n_tokens']):,} tokens"
                                      + (f" of {corpus['source']} ({corpus.get('split', '?')})"
                                         if corpus.get("source") else "")}}
        else:
            examples, out, top = self._scanned(layer, feature)
        logits = None
        if not self.logits_refused[layer]:
            with self.lock.held():
                le = logit_effect(self.model, self.saes[layer], feature, N_LOGITS)
            logits = {"top": _tokens(le.top_tokens, le.top_values, vocab),
                      "bottom": _tokens(le.bottom_tokens, le.bottom_values, vocab), "definition": DEFINITION}
        contexts = [{"act": e["act"], "dest": e["dest"],
                     "segments": [{"start": s["start"], "tokens": s["tokens"], "strs": [vocab[t] for t in s["tokens"]],
                                   "acts": s["acts"]} for s in e["segments"]]} for e in examples]
        return {"layer": layer, "feature": feature, **out, "contexts": contexts,
                "top_tokens": [{"token": int(t), "str": vocab[int(t)], "count": int(c)} for t, c in top],
                "logits": logits, "logits_refused": self.logits_refused[layer]}

    def _scanned(self, layer: int, feature: int) -> tuple[list[dict], dict, list]:
        """A card's examples, numbers and top tokens from the scan (run now if this layer has none yet)."""
        self._scan([layer])
        scan, tokens = self._scans[layer], self.scan_tokens()
        cfg = DashboardConfig()
        with self.lock.held():
            raw, family, stats = top_examples(self.model, cpu_sae(self.saes[layer]), tokens, scan, feature,
                                              self._canonical(), cfg)
        windows = {"before": cfg.window_before, "after": cfg.window_after, "peak_context": cfg.peak_context}
        why = f"; the dashboards folder has no readable data for L{layer} ({self.no_dashboard[layer]})" \
            if layer in self.no_dashboard else ""
        out = {"family": family,
               "family_source": f"the DFA of its top {stats.get('n_examples', 0)} activations in the scan, by the "
                                "dashboards' rule (they read 16)",
               "density": float(scan.density[feature]), "n_fired": int(scan.n_fired[feature]),
               "source": {"kind": "scan", "n_tokens": int(scan.n_tokens),
                          "text": f"a scan of {int(scan.n_tokens):,} tokens of {self.corpus} (validation), run when "
                                  f"first asked{why}"}}
        return [display_example(r, windows) for r in raw][:N_CONTEXTS], out, top_dest_tokens(scan, tokens, feature)

    # ------------------------------------------------------------------------------------------- search

    def _search_index(self, layer: int) -> tuple[Tensor | None, Tensor]:
        """(top logit token ids int64 [d_sae, N_LOGITS] or None where logit effects are refused, top-activating
        token ids int64 [d_sae, N_TOP_TOKENS], -1 padded), made once per layer."""
        if layer in self._index:
            return self._index[layer]
        sae = self.saes[layer]
        top = torch.full((sae.cfg.d_sae, N_TOP_TOKENS), -1, dtype=torch.long)
        rows = self._dashboard_top_tokens(layer)
        if rows is None:
            self._scan([layer])
            rows = [[t for t, _ in top_dest_tokens(self._scans[layer], self.scan_tokens(), f, N_TOP_TOKENS)]
                    for f in range(sae.cfg.d_sae)]
        for f, ids in enumerate(rows):
            top[f, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        logit_ids = None
        if not self.logits_refused[layer]:
            with self.lock.held():
                logit_ids = top_logit_tokens(self.model, sae, N_LOGITS)
        self._index[layer] = (logit_ids, top)
        return self._index[layer]

    def _dashboard_top_tokens(self, layer: int) -> list | None:
        """Every feature's commonest top-activating token from the dashboards folder's index (its feature list's
        column, so no feature data is read), as ``[[token] or []]``; None without dashboards."""
        if layer not in self.dashboards:
            return None
        try:
            column = read_summary(self.site, self.dashboards[layer]["name"])["top_token"]
        except DASHBOARD_ERRORS:
            return None
        if len(column) != self.saes[layer].cfg.d_sae:
            return None
        return [[int(t)] if t >= 0 else [] for t in column]

    def matching_tokens(self, text: str, most: int = 64) -> list[int]:
        """Token ids whose text is ``text``, case and one leading space ignored (as the families match tokens)."""
        cls = fam.canonical_ids([*self.vocab(), text])
        return (cls[:-1] == cls[-1]).nonzero().flatten()[:most].tolist()

    def search(self, query: str, layers: list[int] | None = None, k: int = 20,
               acts: Callable[[int], Tensor] | None = None) -> dict:
        """Features named by ``query`` (``L1/114``), labelled with text containing it, or having a token that
        matches it among their top logits or top-activating tokens; ``acts(layer)`` [S, d_sae], when given: where
        each fires on the prompt. ``{"query", "tokens": [{"token", "str"}], "results": [{"layer", "feature",
        "label", "family", "why": [str], "rank", "fires": {...} | null}], "n_found"}``, best first."""
        layers = sorted(self.saes) if not layers else [l for l in dict.fromkeys(layers)]
        for l in layers:
            if l not in self.saes:
                self._feature(l, 0)
        found: dict[tuple[int, int], list] = {}

        def hit(layer: int, feature: int, rank: float, why: str) -> None:
            entry = found.setdefault((layer, feature), [rank, []])
            entry[0] = min(entry[0], rank)
            entry[1].append(why)

        text = query.strip()
        named = re.fullmatch(r"[Ll]?(\d+)\s*[/.]\s*[Ff]?(\d+)", text)
        if named and int(named[1]) in layers and int(named[2]) < self.saes[int(named[1])].cfg.d_sae:
            hit(int(named[1]), int(named[2]), 0, "its name")
        for l in layers:
            for f, label in self.labels.of_layer(l).items():
                if text and text.lower() in label.lower():
                    hit(l, f, 1, f"label “{label}”")
        ids = self.matching_tokens(query)
        if ids:
            wanted = torch.tensor(ids)
            for l in layers:
                logit_ids, top = self._search_index(l)
                if logit_ids is not None:
                    for f, r in (logit_ids[..., None] == wanted).any(-1).nonzero().tolist():
                        hit(l, f, 2 + r / N_LOGITS, f"top logit #{r + 1}: {self.vocab()[int(logit_ids[f, r])]!r}")
                for f, r in (top[..., None] == wanted).any(-1).nonzero().tolist():
                    hit(l, f, 3 + r / N_TOP_TOKENS, f"top-activating token #{r + 1}: {self.vocab()[int(top[f, r])]!r}")
        fires = {lf: _fires(acts(lf[0])[:, lf[1]]) if acts else None for lf in found}
        best = sorted(found.items(), key=lambda kv: (kv[1][0], fires[kv[0]] is None, kv[0]))[:min(k, MAX_RESULTS)]
        results = [{"layer": l, "feature": f, "label": self.labels.get(l, f), "family": self._family(l, f),
                    "why": why, "rank": rank, "fires": fires[(l, f)]} for (l, f), (rank, why) in best]
        return {"query": query, "tokens": [{"token": i, "str": self.vocab()[i]} for i in ids[:10]],
                "results": results, "n_found": len(found)}

    def _family(self, layer: int, feature: int) -> str | None:
        if layer in self.dashboards:
            return self.dashboards[layer]["families"][feature]
        made = self._cards.get((layer, feature))
        return made["family"] if made else None

    # ------------------------------------------------------------------------------------------- labels

    def labels_path(self) -> str | None:
        """The labels file (None: labels kept in memory only, for as long as the app runs)."""
        return str(self.labels.path) if self.labels.path else None

    def all_labels(self) -> dict:
        """``{"path", "max_chars", "labels": [{"layer", "feature", "label"}]}``."""
        return {"path": self.labels_path(), "max_chars": MAX_LABEL_CHARS, "labels": self.labels.all()}

    def set_label(self, layer: int, feature: int, text: str) -> dict:
        """Label a feature (empty text removes its label): ``{"layer", "feature", "label" | null, "path"}``."""
        self._feature(layer, feature)
        kept = self.labels.set(layer, feature, text)
        return {"layer": layer, "feature": feature, "label": kept, "path": self.labels_path()}


def _tokens(ids: list[int], values: list[float], vocab: list[str]) -> list[dict]:
    return [{"token": int(t), "str": vocab[int(t)], "value": float(v)} for t, v in zip(ids, values)]


def _fires(acts: Tensor) -> dict | None:
    """Where a feature fires on a prompt after BOS, from its activations [S]: None if nowhere."""
    on = (acts[1:] > 0).nonzero().flatten() + 1
    if len(on) == 0:
        return None
    best = int(acts[1:].argmax()) + 1
    return {"n": len(on), "positions": on[:MAX_FIRES].tolist(), "max_position": best, "max_act": float(acts[best])}
