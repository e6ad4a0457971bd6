"""What the pages show of the studies' raw numbers: rounding (`attnsae.views.numbers`) and the example windows
(`attnsae.views.dashboards.display_example`)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from attnsae.views.dashboards import display_example, display_feature
from attnsae.views.numbers import compact, relative, sig

WINDOWS = {"before": 5, "after": 2, "peak_context": 1}


def test_sig_keeps_four_significant_digits_and_leaves_non_finite_alone():
    assert sig(123456.7) == 123500.0 and sig(0.000123456) == 0.0001235 and sig(-2.5) == -2.5
    assert math.isnan(sig(float("nan"))) and sig(float("inf")) == float("inf")


def test_relative_rounds_to_digits_of_the_largest_magnitude():
    assert relative(np.array([12.345, 0.0123, -3.0])) == [12.3, 0, -3]
    assert relative(np.array([0.012345, 0.0001])) == [0.0123, 0.0001]
    assert relative(np.zeros(3)) == [0, 0, 0] and relative(np.zeros(0)) == []
    got = relative(np.array([1.0, np.nan]))
    assert got[0] == 1.0 and math.isnan(got[1])  # NaN stays visible (JSON writes null), never a fake 0


def test_compact_turns_numpy_into_plain_rounded_json():
    raw = {"a": np.float32(1 / 3), "b": [np.int64(4), 2.718281828], "c": np.array([0.5, 0.25]),
           "d": np.array([3, 4], dtype=np.int32), "e": (True, np.bool_(False)), "f": "text", "g": None}
    got = compact(raw)
    assert got == {"a": 0.3333, "b": [4, 2.718], "c": [0.5, 0.25], "d": [3, 4], "e": [True, False], "f": "text",
                   "g": None}
    assert json.loads(json.dumps(got)) == got
    assert type(got["b"][0]) is int and type(got["e"][1]) is bool


def _raw(start: int, dest: int, peak: int, end: int) -> dict:
    n = end - start
    dfa = np.linspace(0.1, 1.0, n).astype(np.float32)
    dfa[peak - start] = 5.0
    return {"act": 1.23456, "ctx": 7, "dest": dest, "dfa_total": 9.87654, "bias": -0.5, "peak": peak,
            "start": start, "tokens": np.arange(start, end) + 100, "acts": np.linspace(0, 2, n), "dfa": dfa}


@pytest.mark.parametrize("peak, spans", [
    (20, [(15, 23)]),              # the peak inside the window: the window alone
    (13, [(12, 23)]),              # its context touches the window: one segment from the peak's context
    (4, [(3, 6), (15, 23)]),       # far before: the peak's context, then the window
    (0, [(0, 2), (15, 23)]),       # at the start: its context clipped at position 0
])
def test_an_example_shows_its_window_and_a_peak_before_it(peak, spans):
    dest = 20
    start = max(0, min(dest - WINDOWS["before"], peak - WINDOWS["peak_context"]))
    ex = display_example(_raw(start, dest, peak, dest + WINDOWS["after"] + 1), WINDOWS)
    assert [(s["start"], s["start"] + len(s["tokens"])) for s in ex["segments"]] == spans
    for s in ex["segments"]:
        assert s["tokens"] == [100 + p for p in range(s["start"], s["start"] + len(s["tokens"]))]
        assert len(s["acts"]) == len(s["dfa"]) == len(s["tokens"])
    assert (ex["act"], ex["dfa_total"], ex["peak"]) == (1.235, 9.877, peak)
    assert any(5.0 in s["dfa"] for s in ex["segments"])  # the peak is always shown


def test_a_window_cut_by_the_context_end_is_not_padded():
    ex = display_example(_raw(15, 20, 20, 21), WINDOWS)  # the context ends at the destination
    assert [(s["start"], len(s["tokens"])) for s in ex["segments"]] == [(15, 6)]


def test_a_feature_is_shown_rounded_with_its_examples_cut():
    feature = {"i": 3, "density": 0.000123456, "head_shares": np.array([0.123456, 0.876544]), "family": "induction",
               "groups": [{"title": "Top", "examples": [_raw(3, 20, 4, 23)]}]}
    shown = display_feature(feature, WINDOWS)
    assert shown["density"] == 0.0001235 and shown["head_shares"] == [0.123, 0.877]
    assert [len(e["segments"]) for g in shown["groups"] for e in g["examples"]] == [2]
    assert json.loads(json.dumps(shown)) == shown
