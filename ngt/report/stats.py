"""Seed statistics for one difference: variant minus reference, in validation loss.

Runs of two variants with the same ``seed``/``data_seed``/``eval_seed`` saw the same
training batches in the same order and are scored on the same tokens: they are a pair,
and the difference within a pair removes what the seed does to both. So a comparison is

- **paired** where two or more seeds are shared: a t interval on the per-seed differences;
- **unpaired (Welch)** where the seeds are not shared but each side has two or more: Welch's
  interval, since two variants need not have the same seed-to-seed spread;
- **one seed** otherwise: the difference of the means, with no interval. It is
  *directional*, never a verdict.

Quantiles come from ``scipy.stats``. A difference is *beyond noise* only where its 95%
interval excludes zero; else it is *indistinguishable* (at the seeds this grid has).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

BEYOND = "beyond noise"
INDISTINGUISHABLE = "indistinguishable"
DIRECTIONAL = "directional"
PAIRED, WELCH, ONE_SEED = "paired", "unpaired (Welch)", "one seed"
LEVEL = 0.95  # two-sided interval, so a 5% test
POWER = 0.80  # for the minimum detectable effect
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # the same report every time it is written


@dataclass(frozen=True)
class Difference:
    delta: float  # mean(other) - mean(reference), over the pairs where paired: negative = other lower (better)
    low: float  # the 95% interval, NaN without one (one seed)
    high: float
    n: int  # pairs, or the seeds of the smaller side where unpaired
    method: str  # PAIRED, WELCH or ONE_SEED
    p_better: float  # bootstrap probability that the other's loss is lower; NaN with one seed
    mde: float  # smallest |difference| this many seeds detect at POWER (see ``min_detectable``); NaN with one seed

    @property
    def verdict(self) -> str:
        if self.method == ONE_SEED:
            return DIRECTIONAL
        return BEYOND if self.low > 0 or self.high < 0 else INDISTINGUISHABLE

    @property
    def direction(self) -> str:
        return "better" if self.delta < 0 else "worse" if self.delta > 0 else "equal"


def min_detectable(se: float, df: float) -> float:
    """The smallest true difference that a two-sided 5% t test detects with 80% power, given
    the standard error ``se`` of the measured difference and its degrees of freedom:

        MDE = (t(1 - 0.05/2, df) + t(0.80, df)) * se

    with se = s_d / sqrt(n) for n paired differences of standard deviation s_d, or Welch's
    sqrt(s_a^2/n_a + s_b^2/n_b). This is the usual normal-theory formula with t quantiles
    (the noncentral t approximated by a shifted central one), so with few seeds it is the
    honest, wide figure: a difference well below it cannot be told from noise here."""
    return float((stats.t.ppf(1 - (1 - LEVEL) / 2, df) + stats.t.ppf(POWER, df)) * se)


def _interval(delta: float, se: float, df: float) -> tuple[float, float]:
    if se == 0:  # identical differences on every seed (e.g. a deterministic run): no spread to test against
        return delta, delta
    half = float(stats.t.ppf(1 - (1 - LEVEL) / 2, df)) * se
    return delta - half, delta + half


def _share_below_zero(means: np.ndarray) -> float:
    """P(mean < 0), a tie counting half: what 'the other is better' is over resamples."""
    return float(np.mean(means < 0) + 0.5 * np.mean(means == 0))


def paired(ref: np.ndarray, other: np.ndarray) -> Difference:
    """``ref[i]`` and ``other[i]`` are one pair (two or more pairs). The bootstrap resamples
    the seeds, i.e. whole pairs."""
    d = np.asarray(other, float) - np.asarray(ref, float)
    n = len(d)
    se = float(d.std(ddof=1)) / math.sqrt(n)
    boot = np.random.default_rng(BOOTSTRAP_SEED).choice(d, size=(RESAMPLES, n)).mean(axis=1)
    low, high = _interval(float(d.mean()), se, n - 1)
    return Difference(float(d.mean()), low, high, n, PAIRED, _share_below_zero(boot), min_detectable(se, n - 1))


def welch(ref: np.ndarray, other: np.ndarray) -> Difference:
    """Two or more seeds on each side, not paired. The bootstrap resamples each side's seeds."""
    a, b = np.asarray(ref, float), np.asarray(other, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    # Welch-Satterthwaite; with no spread on either side any df gives the same (degenerate) interval
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else len(a) + len(b) - 2
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    boot = rng.choice(b, size=(RESAMPLES, len(b))).mean(axis=1) - rng.choice(a, size=(RESAMPLES, len(a))).mean(axis=1)
    delta = float(b.mean() - a.mean())
    low, high = _interval(delta, se, df)
    return Difference(delta, low, high, min(len(a), len(b)), WELCH, _share_below_zero(boot), min_detectable(se, df))


def compare(ref: dict, other: dict) -> Difference | None:
    """``ref``, ``other``: {pair key: loss}. Paired on the shared keys where there are two or
    more, else Welch where each side has two or more, else the one-seed difference of the
    means. None where a side is empty."""
    if not ref or not other:
        return None
    shared = [k for k in ref if k in other]
    if len(shared) >= 2:
        return paired(np.array([ref[k] for k in shared]), np.array([other[k] for k in shared]))
    a, b = np.array(list(ref.values()), float), np.array(list(other.values()), float)
    if len(a) >= 2 and len(b) >= 2:
        return welch(a, b)
    if shared:  # one pair: its own difference, the batches and the evaluation tokens being the same
        a, b = np.array([ref[shared[0]]]), np.array([other[shared[0]]])
    return Difference(float(b.mean() - a.mean()), math.nan, math.nan, min(len(a), len(b)), ONE_SEED, math.nan,
                      math.nan)
