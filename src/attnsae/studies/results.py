"""The studies' results that the views read, as plain data (no torch at import): the family names and statistics of
:mod:`attnsae.studies.families`, and :class:`Dashboards`, what :func:`attnsae.studies.examples.build_dashboards`
returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from attnsae.studies.scan import FeatureScan

FAMILIES = ("induction", "short-range", "long-range", "unclear")
STATS = ("induction", "chance", "local", "self", "far", "mean_distance", "bos")


@dataclass
class Dashboards:
    """The bundle (JSON-ready, schema in :mod:`attnsae.views.dashboards`) and per-SAE results behind it.

    labels[k]: family per feature of SAE k ("dead" if it never fired); stats[k]: feature-level family statistics.
    """

    bundle: dict
    scans: list[FeatureScan]
    labels: list[list[str]]
    stats: list[list[dict]]
    counts: dict[str, dict[str, int]]  # per SAE name: features per family (attnsae.studies.families.breakdown)
    head_shares: list[Tensor]  # per SAE, the exact weight-based head attribution [d_sae, n_heads] (the bundle rounds)
    seconds: dict = field(default_factory=dict)
