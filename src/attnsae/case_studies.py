"""The case-study jobs: run a study (``attnsae.studies``) and write its folder (``attnsae.views``), atomically.

* :func:`run_prefix_induction`: long- vs short-prefix induction heads (:mod:`attnsae.studies.prefix_induction`,
  written by :mod:`attnsae.views.prefix_report`);
* :func:`run_ioi`: the IOI circuit through attention SAEs (:mod:`attnsae.studies.ioi`, written by
  :mod:`attnsae.views.ioi_report`).

The output folder is checked before the (long) study runs (new, or this study's earlier output; never a folder
holding ``inputs``, the files the study reads) and appears complete or not at all.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping

from torch import Tensor

from attnsae.io import atomic_dir, check_output_dir
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
