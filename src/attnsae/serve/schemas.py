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
    POST /api/intervene   {"edits": [EDIT as checked: {"kind": "feature" | "head", ...}], "at" (the position the
                           logits are read after), "at_token", "before": [PRED] (clean run), "after": [PRED] (edited),
                           "logit_diff": {"tokens": [str, str], "ids": [int, int], "before", "after"} | null,
                           "max_abs_logit_change", "downstream": [{"layer", "position", "feature", "before", "after",
                           "delta"}] (every SAE's features as it read hook_z, largest |delta| first, leaving out
                           |delta| <= "tolerance": {layer: float})}
                          EDIT = {"layer", "feature" | "head", "position" (null: all), "op": "zero" | "scale" | "set" |
                                  "patch", "value" (scale, set), "from_position" (patch: the position of "other")};
                          the older body {"layer", "feature", "position", "scale"} is one scale edit
    POST /api/generate    {"n" (tokens made), "asked", "stopped" (why fewer: the time limit) | null, "prompt_tokens",
                           "edits": [EDIT], "clean": {"tokens": [int] n, "strs": [str] n},
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
    POST /api/card        {layer, feature}: what the feature means (attnsae.serve.cards): {"layer", "feature",
                           "label", "family", "family_source", "density", "n_fired",
                           "source": {"kind": "dashboard" | "scan", "n_tokens", "text"},
                           "contexts": [{"act", "dest", "segments": [{"start", "tokens", "strs", "acts"}]}] <= 5,
                           "top_tokens": [{"token", "str", "count"}] <= 5, "logits": {"top", "bottom":
                           [{"token", "str", "value"}] 10, "definition"} | null, "logits_refused"}
    POST /api/search      {query, layers?, k?, prompt?}: {"query", "tokens": [{"token", "str"}] (matched),
                           "results": [{"layer", "feature", "label", "family", "why": [str], "rank",
                           "fires": {"n", "positions" <= 32, "max_position", "max_act"} | null}] k, "n_found"}
    GET  /api/labels      {"path", "max_chars", "labels": [{"layer", "feature", "label"}]}
    POST /api/label       {layer, feature, label ("" removes it)}: {"layer", "feature", "label" | null, "path"}

Errors are ``{"detail": "one line saying what is wrong and what to do"}`` (at most 300 characters of it: an error
never echoes a long input back; :class:`ErrorBody`, and ``/openapi.json`` lists each endpoint's):

* 400: a well-formed request the model or SAEs cannot answer (a prompt past n_ctx, a layer without an SAE, a feature
  or position out of range), an answer over the bounds below, or a ``Host`` header other than ``127.0.0.1``,
  ``localhost``, ``[::1]`` or the ``--host`` given (:class:`attnsae.serve.guards.ServedHosts`);
* 411: a request body without a Content-Length; 413: a body over :data:`MAX_BODY_BYTES`;
* 422: a malformed body (wrong type, out of its range, an unknown field, a list past its ``max_length``);
* 503 with ``Retry-After``: the model stayed busy with another request for :data:`LOCK_WAIT_S`.

Bounds. Every list in a request has a ``max_length`` (``layers``: :data:`MAX_LAYERS`, repeats counted once), every
number a range, every string a length. Each answer's size is counted before the work and a request over
:data:`MAX_ANSWER_ITEMS` entries is refused with 400 saying what to lower: ``features`` lists up to tokens × layers
× k entries, ``compare`` positions × SAE layers × k, ``dfa`` tokens × heads; a graph (``graph``, ``qk``) with more
than :data:`MAX_GRAPH_EDGES` edges is refused before it is built (:func:`attnsae.graph.build.count_edges`), and its
pruned answer past :data:`MAX_ANSWER_ITEMS` nodes and edges (prune more: lower the thresholds). The others are
bounded by ``k``, ``top_k`` (at most :data:`MAX_K`) and the prompt's length (at most n_ctx tokens). As a backstop no
API answer is larger than :data:`MAX_RESPONSE_BYTES`. One lock serialises the model; a request waits for it at most
:data:`LOCK_WAIT_S`, and holds it only for work within the bounds above (docs/explorer.md states the longest hold
measured on the reference model).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from attnsae.views.labels import MAX_LABEL_CHARS

MAX_PROMPT_CHARS = 100_000  # a prompt longer than this is refused before tokenising (n_ctx bounds the tokens)
MAX_BODY_BYTES = 1_000_000  # any request body over this is refused (413)
MAX_K = 200  # the most items any ranked list may ask for
MAX_LAYERS = 1000  # the most entries in a list of layers (repeats are counted once)
MAX_ANSWER_ITEMS = 100_000  # the most entries an answer may list, counted before the work (module docstring)
MAX_GRAPH_EDGES = 16_000_000  # a graph with more edges is refused before it is built (counted from its nodes)
MAX_RESPONSE_BYTES = 32_000_000  # no API answer is larger (a features answer of MAX_ANSWER_ITEMS: 12 to 15 MB)
LOCK_WAIT_S = 30.0  # the longest a request waits for the model before a 503
RETRY_AFTER_S = 5  # the Retry-After of that 503
MAX_EDITS = 32  # the most edits one intervention or generation may apply
MAX_NEW_TOKENS = 32  # the most tokens one generation may ask for (each is a forward pass, twice)
MAX_GENERATE_S = 20.0  # a generation stops adding tokens after this (each of its two runs after half of it)

Prompt = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="text; BOS is prepended")
Layer = Field(ge=0, le=10_000, description="a layer that has an SAE")
Feature = Field(ge=0, le=10_000_000, description="an SAE feature index")
Position = Field(ge=0, le=1_000_000, description="a token position (0 is BOS)")
TargetWord = Annotated[str, Field(max_length=1000, description="a token, '-', or 'LAYER/FEATURE@POS'")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptBody(_Body):
    prompt: str = Prompt


class FeaturesBody(PromptBody):
    order: Literal["act", "dfa", "logit"] = "act"
    k: int = Field(8, ge=1, le=MAX_K, description="features per token and layer")
    layers: list[int] | None = Field(None, max_length=MAX_LAYERS, description="layers to list (default: all with an "
                                     "SAE); repeats count once")


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
    logit_tokens: list[int | Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]] | None = Field(
        None, min_length=2, max_length=2, description="two tokens, each an id or a single-token string: report "
        "logit[0] - logit[1] (ids keep tokens such as '\\n' exact)")
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
    target: list[TargetWord] | None = Field(None, min_length=1, max_length=3, description="[] or null: the top "
                                            "prediction; [token], [token, '-', token], or ['LAYER/FEATURE@POS']")
    mlp: Literal["leaf", "linear"] = "leaf"
    node_threshold: float = Field(0.8, gt=0.0, le=1.0, allow_inf_nan=False)
    edge_threshold: float = Field(0.98, gt=0.0, le=1.0, allow_inf_nan=False)


class EdgeBody(PromptBody):
    target: list[TargetWord] | None = Field(None, min_length=1, max_length=3)
    mlp: Literal["leaf", "linear"] = "leaf"
    source: str = Field(min_length=1, max_length=100, description="the edge's source node, e.g. L0.H6@12")
    dest: str = Field(min_length=1, max_length=100, description="the edge's destination node, e.g. L1.H1@32")


class CompareBody(PromptBody):
    other: str = Prompt
    k: int = Field(10, ge=1, le=MAX_K, description="differences per position")


class ErrorBody(BaseModel):
    """Every refusal's body."""

    detail: str = Field(description="one line: what is wrong and what to do (at most about 300 characters)")


_WHY = {400: "refused: a request the model or SAEs cannot answer, an answer over the bounds, or an unserved Host",
        411: "the request body has no Content-Length", 413: f"the request body is over {MAX_BODY_BYTES:,} bytes",
        422: "a malformed request body", 503: f"the model stayed busy with another request for {LOCK_WAIT_S:g} s"}


def error_responses(*codes: int) -> dict[int, dict]:
    """The ``responses=`` of a route (what ``/openapi.json`` documents) for these refusal status codes."""
    out: dict[int, dict] = {c: {"model": ErrorBody, "description": _WHY[c]} for c in codes}
    if 503 in out:
        out[503]["headers"] = {"Retry-After": {"description": "seconds to wait before asking again",
                                               "schema": {"type": "integer"}}}
    return out


API_ERRORS = error_responses(400, 411, 413, 422, 503)  # every POST /api/... endpoint
INFO_ERRORS = error_responses(400)  # GET /api/info (only an unserved Host)


class CardBody(_Body):
    layer: int = Layer
    feature: int = Feature


class SearchBody(_Body):
    query: str = Field(min_length=1, max_length=100, description="a feature (L1/114), label text, or a token")
    layers: list[int] | None = Field(None, max_length=64, description="layers to search (default: all with an SAE)")
    k: int = Field(20, ge=1, le=50, description="results")
    prompt: str | None = Field(None, min_length=1, max_length=MAX_PROMPT_CHARS,
                               description="also say where each result fires on this prompt")


class LabelBody(_Body):
    layer: int = Layer
    feature: int = Feature
    label: str = Field(max_length=MAX_LABEL_CHARS, description="the feature's label; empty removes it")
