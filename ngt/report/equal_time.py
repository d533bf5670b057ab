"""Equal compute: the comparison at equal training time, beside the one at equal steps.

A variant that is slower per step gets the same number of steps at the fixed step, which
favours it; given the same seconds instead, it has had fewer updates. So each compared run
(each variant at its best learning rate) is read on its own (training seconds, validation
loss) curve, linearly interpolated between evaluations:

- its loss at the longest training time every compared run of its group reached; and
- the time it needed to reach the baseline's loss at the comparison step (the mean of the
  baseline's seeds there), the first crossing of that level, or "not reached".

Training seconds are the trainer's ``elapsed_s`` (evaluation and step 0's start-up left
out), so runs are compared on the same footing only where they ran on alike machines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ngt.report.load import Sweep
from ngt.report.tables import BASELINE, AtStep


# Seeds of one variant do the same work per step; where their training times to the comparison
# step differ by more than this factor, the machine (its load, or another device) set the times.
UNEVEN = 1.25


@dataclass(frozen=True)
class EqualTime:
    times: dict[str, float]  # per group: the longest training time every compared run reached (s)
    # the compared runs at their best lr (rows of at.table): + equal_time_s, val_loss_at_time, time_to_baseline_s
    table: pd.DataFrame
    reach: pd.DataFrame  # per group and variant: target, baseline_s, seeds, reached, mean_s, ratio

    def caution(self) -> str | None:
        """A warning where seeds of one variant took unlike times to the comparison step: the
        equal-time comparison then measures the machine, not the variants."""
        t = self.table.dropna(subset=["elapsed_s"])
        spread = t.groupby(["group", "label"])["elapsed_s"].agg(lambda s: s.max() / s.min() if s.min() > 0 else 1.0)
        if spread.empty or spread.max() <= UNEVEN:
            return None
        label = spread.idxmax()[1]
        return (f"the seeds of one variant ({label}) took up to {spread.max():.1f}x as long as each other to the "
                "comparison step, so the machine's load (or unlike devices), not the variants, set these training "
                "times: compare at equal time only on runs timed on alike, otherwise idle machines")


def curve(metrics: pd.DataFrame, run: str) -> tuple[np.ndarray, np.ndarray]:
    """The run's (training seconds, validation loss) at its finite evaluations, in time order."""
    m = metrics[(metrics["run"] == run) & np.isfinite(metrics["val/loss"].astype(float))].sort_values("elapsed_s")
    return m["elapsed_s"].to_numpy(float), m["val/loss"].to_numpy(float)


def time_to(t: np.ndarray, v: np.ndarray, target: float) -> float:
    """When the curve first comes down to ``target``, interpolated between the two evaluations
    around the crossing; NaN where it never does."""
    below = np.flatnonzero(v <= target)
    if not len(below):
        return math.nan
    i = below[0]
    if i == 0:
        return float(t[0])
    return float(t[i - 1] + (v[i - 1] - target) / (v[i - 1] - v[i]) * (t[i] - t[i - 1]))


def equal_time(sweep: Sweep, at: AtStep) -> EqualTime:
    m = sweep.metrics
    t = at.table[at.table["chosen"]].copy()
    curves = {run: curve(m, run) for run in t.index} if "elapsed_s" in m else {}
    ends = pd.Series({run: c[0][-1] for run, c in curves.items() if len(c[0])}, dtype=float)
    times = ends.groupby(t["group"].reindex(ends.index)).min().to_dict()
    t["equal_time_s"] = t["group"].map(times).astype(float)
    t["val_loss_at_time"] = [float(np.interp(t.at[r, "equal_time_s"], *curves[r])) if r in ends.index else math.nan
                             for r in t.index]
    t["time_to_baseline_s"] = [time_to(*curves[r], t.at[r, "baseline"]) if r in curves else math.nan for r in t.index]
    return EqualTime(times, t, _reach(t))


def _reach(t: pd.DataFrame) -> pd.DataFrame:
    """Per group and variant: how long it took to come down to the baseline's loss at the
    comparison step (``target``), as the mean over its seeds where every seed got there, and
    as a ratio to the baseline's own time to the comparison step (``baseline_s``)."""
    rows = []
    for (group, label), g in t.groupby(["group", "label"], sort=False):
        base = t[(t["group"] == group) & (t["label"] == BASELINE)]
        if base.empty or label == BASELINE:  # the baseline's own time is every row's baseline_s
            continue
        got = g["time_to_baseline_s"].notna()
        mean_s = float(g["time_to_baseline_s"].mean()) if got.all() else math.nan
        base_s = float(base["elapsed_s"].mean())
        rows.append({"group": group, "label": label, "target": float(g["baseline"].iloc[0]), "baseline_s": base_s,
                     "seeds": len(g), "reached": int(got.sum()), "mean_s": mean_s, "ratio": mean_s / base_s if base_s > 0 else math.nan})
    return pd.DataFrame(rows, columns=["group", "label", "target", "baseline_s", "seeds", "reached", "mean_s",
                                       "ratio"])
