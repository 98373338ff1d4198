"""Growth laws of measured series: how a figure (disk, a latency, a size) grows with a count (versions, a backlog).

A soak run measures y at increasing x.  One number summarises whether the figure stays bounded: the ratio of the
tail's median to the median just after warm-up.  The fit says how it grows when it does: a least-squares line
(slope per unit of x, R²) and the exponent of a power law fitted in log-log space (1: linear, 2: quadratic).
Medians of bands, not single points, so one scheduling delay of a shared machine does not decide the verdict.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Law = Literal["flat", "sublinear", "linear", "superlinear", "too few points"]

FLAT_WITHIN = 0.10
"""A figure is flat when the tail's median is within this share of the median after warm-up (the issue's 10 %)."""


@dataclass(frozen=True)
class Growth:
    """How ``y`` grows with ``x``: the medians of the first and last bands, their ratio, a line and a power law."""

    points: int
    x_first: float
    x_last: float
    first: float  # median of y over the first band (after warm-up)
    last: float  # median of y over the last band
    slope: float  # least-squares dy/dx
    r2: float  # of that line
    exponent: float  # of y ∝ x^k fitted in log-log space (NaN where x or y is not positive)
    law: Law

    @property
    def ratio(self) -> float:
        return self.last / self.first if self.first else math.inf


def _line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """(slope, intercept, R²) of the least-squares line."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx if sxx else 0.0
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    r2 = 1 - ss_res / ss_tot if ss_tot else 1.0
    return slope, intercept, r2


def fit(xs: Sequence[float], ys: Sequence[float], *, warmup: float = 0.1, band: float = 0.1) -> Growth:
    """Fit the growth of ``ys`` over ``xs`` (same length, x increasing).  The first ``warmup`` share of the points
    is left out (a store filling its retention window, caches warming); bands are ``band`` of what remains."""
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys differ in length ({len(xs)} vs {len(ys)})")
    pairs = sorted(zip(xs, ys, strict=True))
    pairs = pairs[int(len(pairs) * warmup) :]
    if len(pairs) < 4:
        nan = float("nan")
        x0 = pairs[0][0] if pairs else nan
        x1 = pairs[-1][0] if pairs else nan
        return Growth(len(pairs), x0, x1, nan, nan, nan, nan, nan, "too few points")
    px = [float(x) for x, _ in pairs]
    py = [float(y) for _, y in pairs]
    width = max(2, int(len(pairs) * band))
    first, last = statistics.median(py[:width]), statistics.median(py[-width:])
    slope, _, r2 = _line(px, py)
    logs = [(math.log(x), math.log(y)) for x, y in zip(px, py, strict=True) if x > 0 and y > 0]
    exponent = _line([a for a, _ in logs], [b for _, b in logs])[0] if len(logs) >= 4 else float("nan")
    return Growth(len(pairs), px[0], px[-1], first, last, slope, r2, exponent, _law(first, last, exponent))


def _law(first: float, last: float, exponent: float) -> Law:
    if first > 0 and abs(last / first - 1) <= FLAT_WITHIN:
        return "flat"
    if math.isnan(exponent):
        return "linear" if last > first else "flat"
    if exponent < 0.15:  # shrinking, or growing slower than any power worth naming over this range
        return "flat" if last <= first * (1 + FLAT_WITHIN) else "sublinear"
    if exponent < 0.8:
        return "sublinear"
    if exponent <= 1.2:
        return "linear"
    return "superlinear"
