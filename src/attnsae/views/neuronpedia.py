"""Neuronpedia export (PAPER_NOTES §9): per SAE, ``features.jsonl`` and ``activations.jsonl``.

Layout: ``{out}/{sae name}/features.jsonl`` — one line per feature with ``modelId, layer, index, hookName,
maxActApprox, pos_str/pos_values, neg_str/neg_values`` (direct logit effects), ``frac_nonzero``, the activation
histogram (``freq_hist_data_bar_heights`` counts / ``freq_hist_data_bar_values`` bin centres), the logit-effect
histogram (``logits_hist_data_bar_*``) and ``decoder_weights_dist`` (the weight-based head attribution, one share per
head, as Neuronpedia shows for attention SAEs); ``{out}/{sae name}/activations.jsonl`` — one line per dashboard
example with ``tokens`` (strings, the context from BOS to a few tokens past the destination), ``values`` (the
feature's activation at each token), ``maxValue, maxValueTokenIndex, minValue``, and the DFA of the destination
``dfaValues`` (by source position), ``dfaTargetIndex``, ``dfaMaxValue``. ``layer`` is the Neuronpedia source id,
``{layer}-{source_set}``.
"""

from __future__ import annotations

import json
from pathlib import Path

from attnsae.views.numbers import compact, sig


def _centres(hist: dict) -> list[float]:
    return [sig(hist["start"] + (i + 0.5) * hist["width"]) for i in range(len(hist["counts"]))]


class NeuronpediaWriter:
    """Streams activation records while the dashboards are gathered, then writes the feature records."""

    def __init__(self, out: Path, model_id: str, sae_names: list[str], layers: list[int], vocab: list[str],
                 source_set: str = "att-attnsae") -> None:
        self.out, self.model_id, self.vocab = Path(out), model_id, vocab
        self.sources = [f"{layer}-{source_set}" for layer in layers]
        self.dirs = [self.out / name for name in sae_names]
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
        self.files = [open(d / "activations.jsonl", "w") for d in self.dirs]

    def activation(self, sae: int, feature: int, ex: dict) -> None:
        """One example: ``ex = {tokens, acts, dfa, dest}`` (lists over the context's positions)."""
        values, dfa = ex["acts"], ex["dfa"]
        top = max(range(len(values)), key=values.__getitem__)
        rec = {"modelId": self.model_id, "layer": self.sources[sae], "index": str(feature),
               "tokens": [self.vocab[t] for t in ex["tokens"]], "values": [sig(v) for v in values],
               "maxValue": sig(values[top]), "maxValueTokenIndex": top, "minValue": sig(min(values)),
               "dfaValues": [sig(v) for v in dfa], "dfaTargetIndex": ex["dest"], "dfaMaxValue": sig(max(dfa))}
        self.files[sae].write(json.dumps(rec, ensure_ascii=False) + "\n")

    def features(self, bundle: dict) -> None:
        """Write ``features.jsonl`` for every SAE of the dashboards bundle and close the activation files."""
        vocab = bundle["vocab"]
        for k, (block, d) in enumerate(zip(bundle["saes"], self.dirs)):
            with open(d / "features.jsonl", "w") as fh:
                for f in block["features"]:
                    rec = {"modelId": self.model_id, "layer": self.sources[k], "index": str(f["i"]),
                           "hookName": block["hook_name"], "maxActApprox": f["max_act"],
                           "pos_str": [vocab[t] for t, _ in f["logits"]["pos"]],
                           "pos_values": [v for _, v in f["logits"]["pos"]],
                           "neg_str": [vocab[t] for t, _ in f["logits"]["neg"]],
                           "neg_values": [v for _, v in f["logits"]["neg"]],
                           "frac_nonzero": f["density"],
                           "freq_hist_data_bar_heights": f["hist"]["counts"],
                           "freq_hist_data_bar_values": _centres(f["hist"]),
                           "logits_hist_data_bar_heights": f["logit_hist"]["counts"],
                           "logits_hist_data_bar_values": _centres(f["logit_hist"]),
                           "decoder_weights_dist": f["head_shares"]}
                    fh.write(json.dumps(compact(rec), ensure_ascii=False) + "\n")
        self.close()

    def close(self) -> None:
        for fh in self.files:
            if not fh.closed:
                fh.close()
