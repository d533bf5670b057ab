"""Seed statistics: mean, standard deviation and a 95% interval for a difference of means.

Welch's interval, because two variants need not have the same seed-to-seed spread.
The t quantiles are tabulated (no scipy): a fractional Welch df is rounded down, which
widens the interval slightly, never narrows it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Two-sided 95% quantiles of Student's t (0.975) for df = 1..30, then 40, 60, 120, inf.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
_T975_TAIL = [(40, 2.021), (60, 2.000), (120, 1.980)]


def t975(df: float) -> float:
    d = max(1, math.floor(df))
    if d <= len(_T975):
        return _T975[d - 1]
    below = [t for k, t in _T975_TAIL if k <= d]
    return below[-1] if below else _T975[-1]  # df 31..39 -> the df=30 value (conservative)


@dataclass(frozen=True)
class Difference:
    delta: float  # mean(b) - mean(a)
    low: float
    high: float
    df: float

    @property
    def beyond_noise(self) -> bool:
        """The interval excludes zero: the difference exceeds the seed-to-seed noise."""
        return self.low > 0 or self.high < 0


def welch(a: np.ndarray, b: np.ndarray) -> Difference | None:
    """95% interval for mean(b) - mean(a); None unless both sides have two or more seeds."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    delta = b.mean() - a.mean()
    se2 = va + vb
    if se2 == 0:  # identical values on both sides (e.g. a deterministic run): no spread to test against
        return Difference(delta, delta, delta, math.inf)
    df = se2**2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t975(df) * math.sqrt(se2)
    return Difference(delta, delta - half, delta + half, df)
