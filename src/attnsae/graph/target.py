"""What a graph explains: a token's logit, a logit difference, or one SAE feature's pre-activation.

On the command line (``attnsae graph --target ...``)::

    (none)            the top predicted token at the last position
    " Mary"           that token's logit at the last position (the text must be exactly one token)
    " Mary" - " John" the logit difference (the IOI metric)
    1/123@5           feature 123 of the SAE of layer 1 at position 5 (it must fire there)

A logit target reads the final residual stream at its position through the final norm (its scale frozen) and the
unembedding: ``value = final(x[pos]) · (W_U[:, a] − W_U[:, b]) + b_U[a] − b_U[b]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

from attnsae.errors import AttnsaeError

FEATURE = re.compile(r"^(\d+)/(\d+)@(-?\d+)$")


@dataclass(frozen=True)
class TargetSpec:
    """A target as asked: ``tokens`` (one or two token strings, the second subtracted) or a ``feature``
    ``(layer, index, position)``; neither: the top prediction."""

    tokens: tuple[str, ...] = ()
    feature: tuple[int, int, int] | None = None

    @classmethod
    def parse(cls, words: list[str] | str | None) -> TargetSpec:
        """``--target`` words: ``[]``, ``[" Mary"]``, ``[" Mary", "-", " John"]`` or ``["1/123@5"]``."""
        if words is None or words == [] or words == "":
            return cls()
        words = [words] if isinstance(words, str) else list(words)
        if len(words) == 1 and FEATURE.match(words[0]):
            layer, index, pos = map(int, FEATURE.match(words[0]).groups())
            return cls(feature=(layer, index, pos))
        if len(words) == 1:
            return cls(tokens=(words[0],))
        if len(words) == 3 and words[1] == "-":
            return cls(tokens=(words[0], words[2]))
        raise AttnsaeError(f"--target must be a token, TOKEN - TOKEN, or LAYER/FEATURE@POS (e.g. 1/123@5), got "
                           f"{' '.join(map(repr, words))}")


@dataclass
class Target:
    """A resolved target: ``kind`` "logit" | "logit_diff" | "feature", its position, label and value on the model.

    Logit targets: ``token_ids`` (one or two), ``direction`` [d_model] (the unembedding column, or the difference of
    two) and ``bias`` (``b_U`` alike). A feature target: ``layer`` and ``feature``."""

    kind: str
    pos: int
    label: str
    value: float
    token_ids: tuple[int, ...] = ()
    direction: Tensor | None = None
    bias: float = 0.0
    layer: int | None = None
    feature: int | None = None
    probability: float | None = None

    def frozen_value(self, fp, probes: list[Tensor] | None = None, edit=None) -> Tensor:
        """The target on the frozen model ``fp`` (:meth:`attnsae.graph.frozen.FrozenPrompt.run`'s ``probes`` and
        ``edit`` passed on): a scalar."""
        if self.kind == "feature":
            box: dict[str, Tensor] = {}

            def grab(l: int, part: str, v: Tensor) -> Tensor:
                v = edit(l, part, v) if edit else v
                if l == self.layer and part == "act":
                    box["v"] = v[self.pos, self.feature]
                return v

            fp.run(edit=grab, probes=probes)
            return box["v"]
        x = fp.run(edit=edit, probes=probes)
        return fp.final_read(x, self.pos, self.direction) + (fp.final_b @ self.direction + self.bias)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "pos": self.pos, "label": self.label, "value": self.value,
                "token_ids": list(self.token_ids), "layer": self.layer, "feature": self.feature,
                "probability": self.probability}


def one_token(tokenizer, text: str) -> int:
    """The id of ``text`` when it is exactly one token (no BOS added), else a one-line error."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise AttnsaeError(f"target {text!r} is {len(ids)} tokens ({pieces!r}), not one: give a single token (mind "
                           "the leading space, e.g. ' Mary')")
    return int(ids[0])


def resolve(spec: TargetSpec, fp, tokenizer) -> Target:
    """``spec`` on the frozen prompt ``fp`` (:class:`attnsae.graph.frozen.FrozenPrompt`)."""
    S = fp.S
    if spec.feature is not None:
        layer, j, pos = spec.feature
        pos = pos + S if pos < 0 else pos
        if layer not in fp.saes:
            raise AttnsaeError(f"target feature {layer}/{j}: there is no SAE for layer {layer} (SAEs read layers "
                               f"{', '.join(map(str, sorted(fp.saes))) or 'none'})")
        f = fp.saes[layer]
        if not 0 <= j < f.act.shape[1]:
            raise AttnsaeError(f"target feature {j} is out of range: the SAE of layer {layer} has features "
                               f"0..{f.act.shape[1] - 1}")
        if not 0 <= pos < S:
            raise AttnsaeError(f"target position {spec.feature[2]} is out of range: the prompt has positions "
                               f"0..{S - 1}")
        if not bool(f.active[pos, j]):
            raise AttnsaeError(f"feature {layer}/{j} does not fire at position {pos} (pre-activation "
                               f"{float(f.pre[pos, j]):.4g}): a graph explains an active feature; pick a position "
                               "where it fires")
        return Target("feature", pos, f"L{layer}/{j}@{pos}", float(f.pre[pos, j]), layer=layer, feature=j)
    pos = S - 1
    logits = fp.logits[pos]
    probs = torch.softmax(logits.double(), -1)
    if not spec.tokens:
        ids = (int(logits.argmax()),)
    else:
        ids = tuple(one_token(tokenizer, t) for t in spec.tokens)
        if len(ids) == 2 and ids[0] == ids[1]:
            raise AttnsaeError(f"the two target tokens are the same token ({spec.tokens[0]!r}): the difference is 0")
    strs = [tokenizer.decode([i]) for i in ids]
    direction = fp.W_U[:, ids[0]].clone()
    bias = float(fp.b_U[ids[0]])
    value = float(logits[ids[0]])
    if len(ids) == 2:
        direction -= fp.W_U[:, ids[1]]
        bias -= float(fp.b_U[ids[1]])
        value -= float(logits[ids[1]])
        return Target("logit_diff", pos, f"logit({strs[0]!r}) − logit({strs[1]!r})", value, ids, direction, bias)
    return Target("logit", pos, f"logit({strs[0]!r})", value, ids, direction, bias,
                  probability=float(probs[ids[0]]))
