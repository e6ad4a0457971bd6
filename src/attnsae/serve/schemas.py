"""The Circuit Explorer's JSON API: every request body, with its bounds (what ``/openapi.json`` describes).

Every analysis endpoint is ``POST /api/<name>`` with a JSON body naming the ``prompt`` (text; BOS is prepended as in
training). Positions index the tokens including BOS (0 is BOS). Answers (plain JSON, built by
:mod:`attnsae.serve.session`'s ``to_dict`` methods)::

    GET  /api/info        {"model", "n_layers", "n_heads", "d_head", "n_ctx", "max_prompt_chars",
                           "saes": [{"layer", "d_sae", "hook_name", "architecture", "name"}],
                           "dashboard": bool (feature pages served under /dashboard/), "version"}
    POST /api/features    {"tokens": [int] S, "token_strs": [str] S, "layers": [int],
                           "order": "act" | "dfa" | "logit",
                           "rows": [[{"layer", "feature", "act", "dfa", "logit" (null where logit effects are
                                      refused), "family"?}] ranked] S,
                           "predictions": [[{"token", "str", "prob"}] top 3] S}
    POST /api/dfa         {"layer", "feature", "position", "act", "pre_act", "bias", "dfa_total",
                           "n_heads", "token_strs": [str] S,
                           "terms": [[float] n_heads] S (source x head),
                           "by_src": [float] S, "by_head": [float] n_heads,
                           "identity_error": |pre_act - dfa_total - bias|}
    POST /api/rdfa        one node expanded one level: {"node": NODE, "children": [NODE] and "remainders":
                          {name: v}, each largest |value| first,
                          "residual": node.value - Σ children - Σ remainders, "relative_residual"}
                          NODE = {"kind": "feature" | "head_source" | "component", "name", "value", "layer",
                                  "position", "feature"?, "head"?, "source"?, "coef"?, "activation"?,
                                  "expandable": bool, "ref"?: NODE_REF to POST back as "node" to expand it}
    POST /api/effect      {"layer", "feature", "position", "act",
                           "logit_effect": {"top_strs", "top_values", "bottom_strs", "bottom_values",
                                            "definition", ...} | null, "logit_effect_refused": str | null,
                           "predictions": [{"token", "str", "logit", "prob"}] k}
    POST /api/attention   {"layer", "head", "dest", "weights": [float] S}   (one row of hook_pattern)
    POST /api/intervene   {"layer", "feature", "position" (null: all), "scale",
                           "at" (position the logits are read at), "before": [PRED], "after": [PRED],
                           "logit_diff": {"tokens": [str, str], "before", "after"} | null,
                           "max_abs_logit_change", "downstream": [{"layer", "position", "feature", "before",
                           "after", "delta"}] (largest |delta| first, layers after the edited one)}
    POST /api/graph       the pruned attention graph: {"target", "prompt_tokens", "n_layers", "mlp_mode", "pruning",
                           "scores", "decomposition", "closure_max_rel_error",
                           "nodes": {"id", "kind", "layer", "pos", "index", "value", "const", "effect",
                                     "influence": [...] n}, "edges": {"source", "target", "weight": [...] e}}
                          (attnsae.graph.files; built once per prompt, target and MLP mode)
    POST /api/qk          why the head of one graph edge (source -> dest) attended: {"layer", "head", "dest", "src",
                           "score", "pattern", "key" / "query": {"nodes": [{"node", "value"}], "rest", "constant",
                           "closes"}, "key_contrast": {"nodes", "score_gap"}} (attnsae.graph.qk.qk_split)
    POST /api/compare     {"a": {"tokens", "token_strs"}, "b": {...}, "n_positions": min length,
                           "rows": [[{"layer", "feature", "a", "b", "delta"}] largest |delta| first] per position,
                           "tolerance": {layer: |delta| at or below it is float rounding, left out}}

Errors are 4xx with ``{"detail": "one line saying what is wrong and what to do"}`` (at most 300 characters of it:
an error never echoes a long input back): 413 for a body over the size
limit, 422 for a malformed body, 400 for a well-formed request the model or SAEs cannot answer (a prompt past
n_ctx, a layer without an SAE, a feature or position out of range).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_PROMPT_CHARS = 100_000  # a prompt longer than this is refused before tokenising (n_ctx bounds the tokens)
MAX_BODY_BYTES = 1_000_000  # any request body over this is refused (413)
MAX_K = 200  # the most items any ranked list may ask for

Prompt = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="text; BOS is prepended")
Layer = Field(ge=0, le=10_000, description="a layer that has an SAE")
Feature = Field(ge=0, le=10_000_000, description="an SAE feature index")
Position = Field(ge=0, le=1_000_000, description="a token position (0 is BOS)")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptBody(_Body):
    prompt: str = Prompt


class FeaturesBody(PromptBody):
    order: Literal["act", "dfa", "logit"] = "act"
    k: int = Field(8, ge=1, le=MAX_K, description="features per token and layer")
    layers: list[int] | None = Field(None, max_length=1000, description="layers to list (default: all with an SAE)")


class FeatureAt(PromptBody):
    layer: int = Layer
    feature: int = Feature
    position: int = Position


class EffectBody(FeatureAt):
    k: int = Field(10, ge=1, le=MAX_K)


class NodeRef(_Body):
    """A node to expand: a feature (layer, position, feature, coef) or a head-source term of one (plus head,
    source; ``position`` is the destination). The root is ``{"kind": "feature", ..., "coef": 1}``."""

    kind: Literal["feature", "head_source"]
    layer: int = Layer
    position: int = Position
    feature: int = Feature
    coef: float = Field(1.0, allow_inf_nan=False, ge=-1e30, le=1e30)
    head: int | None = Field(None, ge=0, le=10_000)
    source: int | None = Field(None, ge=0, le=1_000_000)


class RDFABody(PromptBody):
    node: NodeRef
    top_k: int = Field(5, ge=1, le=MAX_K)
    threshold: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False,
                             description="children below this fraction of the node's |value| fold into a remainder")


class AttentionBody(PromptBody):
    layer: int = Layer
    head: int = Field(ge=0, le=10_000)
    dest: int = Position


class InterveneBody(FeatureAt):
    position: int | None = Field(None, ge=0, le=1_000_000, description="null: every position")
    scale: float = Field(0.0, ge=-1000.0, le=1000.0, allow_inf_nan=False, description="0 ablates")
    at: int | None = Field(None, ge=0, le=1_000_000, description="where to read logits (default: last token)")
    logit_tokens: list[int | str] | None = Field(None, min_length=2, max_length=2,
                                                 description="two tokens, each an id or a single-token string: "
                                                 "report logit[0] - logit[1] (ids keep tokens such as '\\n' exact)")
    k: int = Field(10, ge=1, le=MAX_K)


class GraphBody(PromptBody):
    target: list[str] | None = Field(None, min_length=1, max_length=3, description="[] or null: the top prediction; "
                                     "[token], [token, '-', token], or ['LAYER/FEATURE@POS']")
    mlp: Literal["leaf", "linear"] = "leaf"
    node_threshold: float = Field(0.8, gt=0.0, le=1.0, allow_inf_nan=False)
    edge_threshold: float = Field(0.98, gt=0.0, le=1.0, allow_inf_nan=False)


class EdgeBody(PromptBody):
    target: list[str] | None = Field(None, min_length=1, max_length=3)
    mlp: Literal["leaf", "linear"] = "leaf"
    source: str = Field(min_length=1, max_length=100, description="the edge's source node, e.g. L0.H6@12")
    dest: str = Field(min_length=1, max_length=100, description="the edge's destination node, e.g. L1.H1@32")


class CompareBody(PromptBody):
    other: str = Prompt
    k: int = Field(10, ge=1, le=MAX_K, description="differences per position")
