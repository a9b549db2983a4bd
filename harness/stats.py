"""Small numeric helpers shared by the benchmark checks and the report (no torch, so reports stay light)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def fit_exponent(lengths: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log(value) against log(length): ~1 for linear growth, ~2 for quadratic."""
    if len(lengths) != len(values) or len(lengths) < 2:
        raise ValueError("fit_exponent needs at least two (length, value) pairs of equal count")
    xs = [math.log(x) for x in lengths]
    ys = [math.log(y) for y in values]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("fit_exponent needs at least two distinct lengths")
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
