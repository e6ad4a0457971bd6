"""IOI prompts (Wang et al.): templates, single-token names, per-prompt positions, and the corruptions.

A prompt is a template filled in, e.g. ABBA ``When Mary and John went to the store, John gave a drink to`` (IO =
Mary, S = John) or BABA ``When John and Mary went to ...``; the answer after END (" to") is IO. Every name must be
one token of the model's tokenizer *with* its leading space (" Mary"), which :func:`single_token_names` checks; the
whole prompt is then tokenised at once and each role is located through the tokenizer's character offsets, so the
positions are those of the text the model really reads.

Positions are per prompt (prompts differ in length; they are right-padded with BOS): ``pos[role]`` int64 [n] for
the roles ``IO``, ``S1``, ``AND`` (first token of the connector between the two names), ``S2`` and ``END``.

Corruptions rebuild the same prompts with one thing changed (:func:`corrupt`):

* ``abc``: S2 becomes a third name C (no duplicate any more) — the corruption the patching scans use;
* ``names_filler`` (the paper's corruption A): new IO and S names and new place and object, same template and
  order, so the duplicate keeps its place relative to " and" (and, when place and object are one token each, every
  absolute position too);
* ``names_filler_shifted``: corruption A behind a lead-in (``LEAD``), which moves every position while the duplicate
  keeps its place relative to " and": whether the S2 signal is relative or absolute position;
* ``connector`` (corruption B): " and" becomes another word (" alongside" in the paper).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace
from typing import Sequence

import torch
from torch import Tensor

from attnsae.errors import AttnsaeError

# Each base template appears in both orders; {N1} {AND} {N2} are the two names and the connector, {S2} the repeat.
BASE_TEMPLATES: dict[str, str] = {
    "when": "When {N1} {AND} {N2} went to the {PLACE}, {S2} gave a {OBJECT} to",
    "then": "Then, {N1} {AND} {N2} went to the {PLACE}. {S2} gave a {OBJECT} to",
}
ORDERS = ("ABBA", "BABA")  # ABBA: IO comes first (N1 = IO, N2 = S); BABA: S comes first (N1 = S, N2 = IO)
ROLES = ("IO", "S1", "AND", "S2", "END")

NAMES = ("Mary", "John", "Tom", "James", "Dan", "Kate", "Alice", "Bob", "Anna", "Paul", "Mark", "Sam", "Max", "Ben",
         "Tim", "Jack", "Joe", "Jim", "Lisa", "Amy", "Adam", "David", "Peter", "Sarah", "Emma", "Mike", "Bill",
         "Jane", "Rose", "Laura", "Michael", "Robert", "William", "Thomas", "Richard", "Susan", "Linda", "Karen",
         "George", "Edward", "Henry", "Charles", "Daniel", "Emily", "Anne", "Lucy", "Grace", "Jessica", "Martin")
PLACES = ("store", "park", "school", "garden", "station", "office", "beach", "restaurant", "hospital", "library",
          "market", "house")
OBJECTS = ("drink", "ring", "book", "bone", "basketball", "computer", "kiss", "snack", "letter", "ball", "necklace",
           "apple")
MIN_NAMES = 4  # IO, S, and two fresh names for the corruptions
LEAD = "Later that week, as it happened. "  # names_filler_shifted's lead-in: every role moves right


@dataclass(frozen=True)
class IOIPrompt:
    """One filled-in template: names are words without the leading space (``"Mary"``)."""

    template: str  # a key of the templates, e.g. "when"
    order: str  # "ABBA" or "BABA"
    io: str
    s: str
    place: str
    obj: str
    connector: str = "and"
    s2: str | None = None  # the name at S2 (None: S itself; the ABC corruption puts a third name here)
    lead: str = ""  # text before the template (names_filler_shifted)

    def fill(self, templates: dict[str, str]) -> tuple[str, dict[str, tuple[int, int]]]:
        """The prompt text and the character span of each placeholder's value: ``{"N1": (start, end), ...}``."""
        n1, n2 = (self.io, self.s) if self.order == "ABBA" else (self.s, self.io)
        values = {"N1": n1, "N2": n2, "AND": self.connector, "S2": self.s2 or self.s, "PLACE": self.place,
                  "OBJECT": self.obj}
        text, spans, last = self.lead, {}, 0
        t = templates[self.template]
        for m in re.finditer(r"\{(\w+)\}", t):
            text += t[last:m.start()]
            spans[m.group(1)] = (len(text), len(text) + len(values[m.group(1)]))
            text += values[m.group(1)]
            last = m.end()
        return text + t[last:], spans


@dataclass
class IOIDataset:
    """IOI prompts tokenised with BOS first and right-padded with BOS.

    tokens: int64 [n, pos]; lengths: int64 [n]; pos: ``{role: int64 [n]}`` for ROLES; io_tok, s_tok: int64 [n]
    (the answer tokens " IO" and " S"); specs, prompts, templates: one per prompt (``templates[i]`` e.g.
    ``"when-ABBA"``).
    """

    tokens: Tensor
    lengths: Tensor
    pos: dict[str, Tensor]
    io_tok: Tensor
    s_tok: Tensor
    specs: list[IOIPrompt]
    prompts: list[str]
    names: list[str] = field(default_factory=list)  # the checked single-token names the prompts were drawn from

    def __len__(self) -> int:
        return len(self.specs)

    @property
    def templates(self) -> list[str]:
        return [f"{p.template}-{p.order}" for p in self.specs]

    @property
    def orders(self) -> list[str]:
        return [p.order for p in self.specs]

    def to_dict(self) -> dict:
        return {"prompts": self.prompts, "templates": self.templates, "lengths": self.lengths.tolist(),
                "pos": {k: v.tolist() for k, v in self.pos.items()}, "io_tok": self.io_tok.tolist(),
                "s_tok": self.s_tok.tolist(), "names": self.names}


def name_token(tokenizer, name: str) -> int | None:
    """The token id of ``" " + name`` when that is exactly one token, else None."""
    ids = tokenizer(" " + name, add_special_tokens=False)["input_ids"]
    return int(ids[0]) if len(ids) == 1 else None


def single_token_names(tokenizer, names: Sequence[str] = NAMES) -> list[str]:
    """The names that are one token with a leading space, each with a distinct id (first occurrence kept)."""
    out, seen = [], set()
    for n in names:
        t = name_token(tokenizer, n)
        if t is not None and t not in seen:
            out.append(n)
            seen.add(t)
    return out


def build_ioi_dataset(tokenizer, n_prompts: int = 80, seed: int = 0, names: Sequence[str] = NAMES,
                      templates: dict[str, str] | None = None, places: Sequence[str] = PLACES,
                      objects: Sequence[str] = OBJECTS) -> IOIDataset:
    """``n_prompts`` IOI prompts, cycling over every (template, order) pair so each gets the same share.

    Names are drawn from those of ``names`` that :func:`single_token_names` keeps (at least 4 are needed); IO and S
    differ in every prompt. Deterministic in ``seed``.
    """
    templates = dict(BASE_TEMPLATES if templates is None else templates)
    if n_prompts < 1:
        raise AttnsaeError(f"n_prompts must be at least 1, got {n_prompts}")
    usable = single_token_names(tokenizer, names)
    if len(usable) < MIN_NAMES:
        raise AttnsaeError(f"only {len(usable)} of {len(names)} names are single tokens in this tokenizer "
                           f"({', '.join(usable) or 'none'}); IOI needs at least {MIN_NAMES}: use a model that reads "
                           "English (e.g. smollm2-135m), or, from Python, other names (ioi_study(..., names=[...]))")
    rng = random.Random(seed)
    kinds = [(t, o) for t in templates for o in ORDERS]
    specs = []
    for i in range(n_prompts):
        t, o = kinds[i % len(kinds)]
        io, s = rng.sample(usable, 2)
        specs.append(IOIPrompt(t, o, io, s, rng.choice(list(places)), rng.choice(list(objects))))
    return tokenize_prompts(tokenizer, specs, templates, usable)


def tokenize_prompts(tokenizer, specs: Sequence[IOIPrompt], templates: dict[str, str] | None = None,
                     names: Sequence[str] = ()) -> IOIDataset:
    """Tokenise filled-in prompts (BOS first) and locate every role through the tokenizer's character offsets.

    Each name must be exactly one token in context, the token of ``" " + name``; anything else is refused.
    """
    from attnsae.corpus import bos_token_id

    templates = dict(BASE_TEMPLATES if templates is None else templates)
    if not getattr(tokenizer, "is_fast", False):
        raise AttnsaeError("IOI needs a fast tokenizer (one with character offsets) to locate the names")
    bos = bos_token_id(tokenizer)
    rows, pos, io_tok, s_tok, prompts = [], {r: [] for r in ROLES}, [], [], []
    for p in specs:
        text, spans = p.fill(templates)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = [bos] + list(enc["input_ids"]), [(0, 0)] + [tuple(o) for o in enc["offset_mapping"]]

        io_key, s_key = ("N1", "N2") if p.order == "ABBA" else ("N2", "N1")
        for role, key, name in (("IO", io_key, p.io), ("S1", s_key, p.s), ("AND", "AND", None),
                                ("S2", "S2", p.s2 or p.s)):
            pos[role].append(_token_at(tokenizer, text, ids, offsets, spans[key], name))
        pos["END"].append(len(ids) - 1)
        rows.append(ids)
        io_tok.append(name_token(tokenizer, p.io))
        s_tok.append(name_token(tokenizer, p.s))
        prompts.append(text)
    S = max(len(r) for r in rows)
    tokens = torch.full((len(rows), S), bos, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = torch.tensor(r)
    return IOIDataset(tokens, torch.tensor([len(r) for r in rows]), {r: torch.tensor(v) for r, v in pos.items()},
                      torch.tensor(io_tok), torch.tensor(s_tok), list(specs), prompts, list(names))


def _token_at(tokenizer, text: str, ids: list[int], offsets: list[tuple[int, int]], span: tuple[int, int],
              name: str | None) -> int:
    """The index of the first token overlapping character ``span`` of ``text`` (``ids`` and ``offsets`` with BOS
    first); for a name, that token must be the only one there and be the token of ``" " + name``."""
    lo, hi = span
    hits = [i for i, (a, b) in enumerate(offsets) if i > 0 and a < hi and b > lo]
    if name is not None:
        want = name_token(tokenizer, name)
        if len(hits) != 1 or want is None or ids[hits[0]] != want:
            raise AttnsaeError(f"name {name!r} is not one token in the prompt {text!r}; use single-token names (see "
                               "single_token_names)")
    return hits[0]


# ----------------------------------------------------------------------------------------------- corruptions

CORRUPTIONS = ("abc", "names_filler", "names_filler_shifted", "connector")


def corrupt(tokenizer, ds: IOIDataset, kind: str, seed: int = 1, connector: str = "alongside",
            templates: dict[str, str] | None = None, places: Sequence[str] = PLACES,
            objects: Sequence[str] = OBJECTS) -> IOIDataset:
    """The dataset with one thing changed per prompt (see the module docstring); positions are recomputed."""
    if kind not in CORRUPTIONS:
        raise AttnsaeError(f"unknown corruption {kind!r}: use one of {', '.join(CORRUPTIONS)}")
    rng = random.Random(seed)
    names = ds.names or single_token_names(tokenizer)
    specs = []
    for p in ds.specs:
        fresh = [n for n in names if n not in (p.io, p.s)]
        if kind == "abc":
            specs.append(replace(p, s2=rng.choice(fresh)))
        elif kind in ("names_filler", "names_filler_shifted"):
            io, s = rng.sample(fresh, 2)
            place = rng.choice([x for x in places if x != p.place] or list(places))
            obj = rng.choice([x for x in objects if x != p.obj] or list(objects))
            specs.append(replace(p, io=io, s=s, place=place, obj=obj,
                                 lead=LEAD if kind == "names_filler_shifted" else p.lead))
        else:
            specs.append(replace(p, connector=connector))
    return tokenize_prompts(tokenizer, specs, templates, names)
