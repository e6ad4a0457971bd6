"""What a command reads, checked before any work: SAEs and the model they fit, the corpus they default to, token
contexts, and the output paths it may write (new, or its own earlier output; never an input)."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from attnsae.errors import AttnsaeError


def model_for_sae(sae, given: str | None) -> str | None:
    """The model to load for ``sae``: ``given`` (``--model``) if any, else the model the SAE names (the reference
    model, a zoo name, a local folder or a hub name, which needs network the first time); ``None`` (the reference
    model) when it names none."""
    if given is not None:
        return given
    return sae.cfg.model_name or None


def corpus_for_sae(sae, given: str | None) -> str:
    """``--source`` if given; else the SAE's training corpus when it is a named source; else stdlib."""
    from attnsae.corpus import NAMED_SOURCES

    trained_on = sae.cfg.extra.get("dataset_path")
    return given or (trained_on if trained_on in NAMED_SOURCES else "stdlib")


def load_saes_and_model(paths: list[str], model_arg: str | None, device: str):
    """Load SAEs, then their model (``--model`` or the SAEs' own), and refuse any SAE that does not fit it."""
    from attnsae.models import check_device, load_model
    from attnsae.sae.checks import sae_layer
    from attnsae.sae.formats import load_sae

    check_device(device)
    saes = [load_sae(p, device=device) for p in paths]
    for path, sae in zip(paths, saes):  # an SAE on another hook is refused before the (slow) model load
        try:
            sae_layer(sae)
        except AttnsaeError as e:
            raise AttnsaeError(f"SAE {path}: {e}") from None
    model = load_model(model_for_sae(saes[0], model_arg), device=device)
    check_saes_fit(model, paths, saes)
    return saes, model


def check_saes_fit(model, paths: list[str], saes: list) -> None:
    """Refuse any SAE that does not fit ``model``, naming its path."""
    from attnsae.sae.checks import check_sae

    for path, sae in zip(paths, saes):
        try:
            check_sae(model, sae)
        except AttnsaeError as e:
            raise AttnsaeError(f"SAE {path}: {e}") from None


def sae_names(paths: list[str]) -> list[str]:
    """A short name per SAE path (its folder or file name), made unique with a suffix where needed."""
    from attnsae.io import printable

    names = [printable((lambda q: q.stem if q.suffix == ".pt" else q.name)(Path(p.rstrip("/"))) or p) for p in paths]
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def load_tokens(model, n_tokens: int, source: str = "stdlib", split: str = "validation", context_size: int = 128,
                prepend_bos: bool = True, text_field: str = "text", progress: bool = True) -> np.ndarray:
    """Whole contexts (BOS at 0 with ``prepend_bos``) covering ``n_tokens`` tokens of ``source``'s ``split``:
    int64 ``[n_contexts, context_size]``."""
    from attnsae.corpus import load_corpus

    n_contexts = math.ceil(n_tokens / context_size)
    per_context = context_size - 1 if prepend_bos else context_size
    corpus = load_corpus(model.tokenizer, source, split, context_size, prepend_bos, text_field,
                         max_tokens=n_contexts * per_context, n_ctx=model.cfg.n_ctx, progress=progress)
    return corpus.tokens[:n_contexts]


def check_out(path: str, command: str, sae_paths: list[str] = (), source: str | None = None) -> Path:
    """``--out`` of ``command``, checked before any work (:func:`attnsae.io.check_output_dir`): new, empty or this
    command's earlier output, and never one of the inputs (the SAEs, a local corpus) or a folder holding one."""
    from attnsae.io import check_output_dir

    return check_output_dir(path, command, [*sae_paths, *([source] if source else [])])


def check_save_path(save: str, source: str) -> None:
    """``--save``: a new file (never an existing one, which may be anyone's, nor the corpus it reads)."""
    from attnsae.io import check_writable_dir

    if not save:
        raise AttnsaeError("--save is empty; give a .npy file path")
    path = Path(save)
    if os.path.lexists(source) and os.path.lexists(path) and os.path.realpath(source) == os.path.realpath(path):
        raise AttnsaeError(f"--save {path} is the corpus --source it reads; an output never replaces an input: give "
                           "another file")
    if os.path.lexists(path):
        raise AttnsaeError(f"--save {path} already exists; attnsae writes a new file and replaces nothing: give a new "
                           "path, or remove the old file first")
    check_writable_dir(path.parent)


@functools.lru_cache(maxsize=1)
def stdlib_note() -> str | None:
    """None when this Python's ``stdlib`` validation split is the one the reference model was measured on (its
    card's fingerprint), so that the README's numbers reproduce; else one line saying why numbers will differ. The
    ``stdlib`` corpus is the running interpreter's own standard library."""
    from attnsae.corpus import fingerprint, stdlib_files
    from attnsae.models import REFERENCE_DIR

    card = json.loads((REFERENCE_DIR / "card.json").read_text())["corpus"]
    if fingerprint(stdlib_files("validation")) == card["validation"]["sha256"]:
        return None
    return (f"this Python's standard library ({sys.version.split()[0]}) is not the one the reference model was "
            f"trained and measured on (Python {card['python']}): the stdlib corpus differs, so numbers measured on "
            "it differ from the README's and the model card's")
