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
    POST /api/rdfa        one node expanded one level: {"node": NODE, "children": [NODE], "remainders": {name: v},
                           "residual": node.value - Σ children - Σ remainders, "relative_residual"}
                          NODE = {"kind": "feature" | "head_source" | "component", "name", "value", "layer",
                                  "position", "feature"?, "head"?, "source"?, "coef"?, "activation"?,
                                  "expandable": bool, "ref"?: NODE_REF to POST back as "node" to expand it}
    POST /api/effect      {"layer", "feature", "position", "act",
                           "logit_effect": {"top_strs", "top_values", "bottom_strs", "bottom_values",
                                            "definition", ...} | null, "logit_effect_refused": str | null,
                           "predictions": [{"token", "str", "logit", "prob"}] k}
    POST /api/attention   {"layer", "head", "dest", "weights": [float] S}   (one row of hook_pattern)
    POST /api/intervene   {"edits": [EDIT as checked: {"kind": "feature" | "head", ...}], "at" (the position the
                           logits are read after), "at_token", "before": [PRED] (clean run), "after": [PRED] (edited),
                           "logit_diff": {"tokens": [str, str], "ids": [int, int], "before", "after"} | null,
                           "max_abs_logit_change", "downstream": [{"layer", "position", "feature", "before", "after",
                           "delta"}] (every SAE's features as it read hook_z, largest |delta| first, leaving out
                           |delta| <= "tolerance": {layer: float})}
                          EDIT = {"layer", "feature" | "head", "position" (null: all), "op": "zero" | "scale" | "set" |
                                  "patch", "value" (scale, set), "from_position" (patch: the position of "other")};
                          the older body {"layer", "feature", "position", "scale"} is one scale edit
    POST /api/generate    {"n", "prompt_tokens", "edits": [EDIT], "clean": {"tokens": [int] n, "strs": [str] n},
                           "edited": {...}, "first_difference": index into the n tokens | null}
                          (greedy; attnsae.evals.interventions says how edits reach generated tokens)
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

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_PROMPT_CHARS = 100_000  # a prompt longer than this is refused before tokenising (n_ctx bounds the tokens)
MAX_BODY_BYTES = 1_000_000  # any request body over this is refused (413)
MAX_K = 200  # the most items any ranked list may ask for
MAX_EDITS = 32  # the most edits one intervention or generation may apply
MAX_NEW_TOKENS = 32  # the most tokens one generation may ask for (each is a forward pass, twice)

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


class EditBody(_Body):
    """One edit (attnsae.evals.interventions.Edit): a feature of the SAE at ``layer``, or a head at any layer."""

    layer: int = Field(ge=0, le=10_000)
    feature: int | None = Field(None, ge=0, le=10_000_000, description="an SAE feature (or give head)")
    head: int | None = Field(None, ge=0, le=10_000, description="a head: its slice of hook_z (or give feature)")
    position: int | None = Field(None, ge=0, le=1_000_000, description="null: every position")
    op: Literal["zero", "scale", "set", "patch"] = "zero"
    value: float | None = Field(None, ge=-1e6, le=1e6, allow_inf_nan=False, description="scale: the factor; set: "
                                "the value")
    from_position: int | None = Field(None, ge=0, le=1_000_000, description="patch: the position of the other "
                                      "prompt read (default: the same, on prompts of equal length)")


Edits = Field(default_factory=list, max_length=MAX_EDITS, description=f"up to {MAX_EDITS} edits, applied together")
Other = Field(None, min_length=1, max_length=MAX_PROMPT_CHARS, description="prompt B, that patches read from")


class InterveneBody(PromptBody):
    edits: list[EditBody] = Edits
    other: str | None = Other
    layer: int | None = Field(None, ge=0, le=10_000, description="older body: one feature scaled (give edits instead)")
    feature: int | None = Field(None, ge=0, le=10_000_000, description="older body, with layer")
    position: int | None = Field(None, ge=0, le=1_000_000, description="older body: null for every position")
    scale: float = Field(0.0, ge=-1000.0, le=1000.0, allow_inf_nan=False, description="older body: 0 ablates")
    at: int | None = Field(None, ge=0, le=1_000_000, description="where to read logits (default: last token)")
    logit_tokens: list[int | str] | None = Field(None, min_length=2, max_length=2,
                                                 description="two tokens, each an id or a single-token string: "
                                                 "report logit[0] - logit[1] (ids keep tokens such as '\\n' exact)")
    k: int = Field(10, ge=1, le=MAX_K)

    @model_validator(mode="after")
    def _one_form(self) -> InterveneBody:
        older = (self.layer, self.feature, self.position) != (None, None, None) or "scale" in self.model_fields_set
        if older and self.edits:
            raise ValueError("give edits, or the older layer, feature, position and scale, not both")
        if older and (self.layer is None or self.feature is None):
            raise ValueError("the older body needs both layer and feature (or give edits)")
        return self

    def edit_list(self) -> list[dict]:
        """The edits as plain dicts; the older body as one scale edit."""
        if self.layer is not None:
            return [{"layer": self.layer, "feature": self.feature, "position": self.position, "op": "scale",
                     "value": self.scale}]
        return [e.model_dump() for e in self.edits]


class GenerateBody(PromptBody):
    edits: list[EditBody] = Edits
    other: str | None = Other
    n: int = Field(10, ge=1, le=MAX_NEW_TOKENS, description="tokens to generate")


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
