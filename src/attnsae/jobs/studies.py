"""The case-study jobs: run a study (``attnsae.studies``) and write its folder (``attnsae.views``), atomically.

* :func:`run_prefix_induction`: long- vs short-prefix induction heads (:mod:`attnsae.studies.prefix_induction`,
  written by :mod:`attnsae.views.prefix_report`);
* :func:`run_ioi`: the IOI circuit through attention SAEs (:mod:`attnsae.studies.ioi`, written by
  :mod:`attnsae.views.ioi_report`);
* :func:`prefix_induction_study` and :func:`ioi_job`: the same from paths and names (what the CLI calls).

The output folder is checked before the (long) study runs (new, or this study's earlier output; never a folder
holding ``inputs``, the files the study reads) and appears complete or not at all.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping

import torch
from torch import Tensor

from attnsae.io import atomic_dir, check_output_dir
from attnsae.jobs.inputs import check_out, load_saes_and_model, load_tokens
from attnsae.sae.model import SAE
from attnsae.studies.ioi import ioi_study
from attnsae.studies.prefix_induction import prefix_induction
from attnsae.views.ioi_report import write_ioi_report
from attnsae.views.prefix_report import write_report


def run_prefix_induction(model, tokens: Tensor, out: str | os.PathLike, inputs: Iterable[str] = (), **kwargs) -> dict:
    """:func:`~attnsae.studies.prefix_induction.prefix_induction` (same keyword arguments) on ``tokens [n, S]``,
    written into folder ``out``; returns the headline summary with its ``table`` and ``files``."""
    command, inputs = "study prefix-induction", list(inputs)
    out = check_output_dir(out, command, inputs)
    result = prefix_induction(model, tokens, **kwargs)
    with atomic_dir(out, owner=command, inputs=inputs) as tmp:
        return write_report(result, tmp)


def run_ioi(model, saes: Mapping[int, SAE] | None, out: str | os.PathLike, inputs: Iterable[str] = (),
            **kwargs) -> dict:
    """:func:`~attnsae.studies.ioi.ioi_study` (same keyword arguments), written into folder ``out``
    (``ioi.json``, ``report.md``, plots); returns the result."""
    command, inputs = "study ioi", list(inputs)
    out = check_output_dir(out, command, inputs)
    result = ioi_study(model, saes, **kwargs)
    with atomic_dir(out, owner=command, inputs=inputs) as tmp:
        write_ioi_report(result, tmp)
    return result


def prefix_induction_study(out: str | os.PathLike, model: str | None = None, device: str = "cpu",
                           sae_path: str | None = None, source: str = "stdlib", split: str = "validation",
                           context_size: int = 128, prepend_bos: bool = True, text_field: str = "text",
                           n_tokens: int = 25_600, progress: bool = True, **kwargs) -> dict:
    """``attnsae study prefix-induction``: ``model`` (with ``sae_path``, an SAE of its induction layer: then the
    SAE's model by default) on ``n_tokens`` tokens of ``source``; ``kwargs``: the study's own (``n_seqs``,
    ``seq_len``, ``max_prefix``, ``max_pairs``, ``seed``). Returns :func:`run_prefix_induction`'s summary."""
    from attnsae.models import load_model

    inputs = [sae_path] if sae_path else []
    check_out(out, "study prefix-induction", inputs, source)
    if sae_path:
        (sae,), lm = load_saes_and_model([sae_path], model, device)
    else:
        sae, lm = None, load_model(model, device=device)
    tokens = torch.from_numpy(load_tokens(lm, n_tokens, source, split, context_size, prepend_bos, text_field,
                                          progress))
    return run_prefix_induction(lm, tokens, out, inputs=inputs, sae=sae, progress=progress, **kwargs)


def ioi_job(out: str | os.PathLike, model: str | None = "smollm2-135m", device: str = "cpu",
            sae_paths: list[str] = (), progress: bool = True, **kwargs) -> dict:
    """``attnsae study ioi``: the IOI study of ``model`` through the SAEs at ``sae_paths`` (their features ablated at
    S2 and read; none: patching and noising only); ``kwargs``: the study's own (``n_prompts``, ``seed``,
    ``k_layers``, ``per_head``, ``head_layers``, ``max_features``). Returns :func:`run_ioi`'s result."""
    from attnsae.models import load_model

    sae_paths = list(sae_paths)
    check_out(out, "study ioi", sae_paths)
    saes, lm = load_saes_and_model(sae_paths, model, device) if sae_paths else ([], load_model(model, device=device))
    return run_ioi(lm, saes or None, out, inputs=sae_paths, progress=progress, **kwargs)
