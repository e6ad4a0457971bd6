"""Numbers as pages and JSON files show them. Studies return raw numbers; they are rounded here, when written:
to a few significant digits (readable, and the files stay small), and arrays relative to their largest magnitude."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def sig(v: float, digits: int = 4) -> float:
    """``v`` to ``digits`` significant digits; non-finite values unchanged."""
    v = float(v)
    return float(f"{v:.{digits}g}") if math.isfinite(v) else v


def relative(x: Any, digits: int = 3) -> list:
    """``x`` (float array [n]) to ``digits`` significant digits of its largest magnitude, as a list: values far below
    the largest become 0, whole numbers ints (compact JSON)."""
    x = np.asarray(x, dtype=np.float64)
    m = float(np.abs(x).max()) if x.size else 0.0
    if m == 0 or not math.isfinite(m):
        return np.zeros_like(x).tolist() if x.size and m == 0 else x.tolist()
    dec = min(int(digits - 1 - np.floor(np.log10(m))), 12)
    return [int(v) if v == int(v) else v for v in np.round(x, dec).tolist()]


def compact(obj: Any, digits: int = 4) -> Any:
    """``obj`` (nested dicts, lists, tuples) as plain data for JSON: every float to ``digits`` significant digits,
    every float array a :func:`relative` list, integer arrays and numpy scalars plain Python numbers."""
    if isinstance(obj, dict):
        return {k: compact(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [compact(v, digits) for v in obj]
    if isinstance(obj, np.ndarray):
        return relative(obj, digits - 1) if obj.dtype.kind == "f" else obj.tolist()
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return sig(obj, digits)
    return obj
