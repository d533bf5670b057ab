"""Validation curves compared run by run: which variants trained to the same curve as
another (their switches did nothing in this run), and each variant's difference to the
baseline at every evaluated step.

Where raw loss curves lie on top of each other, the difference to the baseline at the same
step and seed separates them: the seed's share of the loss, common to both runs of a pair,
cancels out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ngt.report.stats import compare
from ngt.report.tables import BASELINE, PAIR, AtStep, by_pair

# Two runs alike but for a switch that does nothing still differ in float32 rounding (the
# same sums in another order): a few 1e-6 of the loss after a few hundred steps on a CPU. A
# switch that changes the model moves the loss by far more (1e-3 and up in the default grid).
RTOL = 1e-5


def _order(label: str) -> tuple:
    """The reference a same curve is named after: the baseline, then the default NGT, then by name."""
    return label != BASELINE, label != "ngt_default", label


def _val_series(metrics: pd.DataFrame, run: str) -> pd.Series:
    m = metrics[metrics["run"] == run]
    return m.set_index("step")["val/loss"].dropna() if "val/loss" in m else pd.Series(dtype=float)


def _max_rel(metrics: pd.DataFrame, runs: pd.DataFrame, a: str, b: str) -> float | None:
    """The largest relative difference between the validation curves of ``a`` and ``b`` over
    their same-seed, same-lr runs and shared steps; None where no such pair shares two steps."""
    keys = ["lr", *PAIR]
    ra = runs[runs["label"] == a].set_index(keys)
    rb = runs[runs["label"] == b].set_index(keys)
    worst = None
    for key in ra.index.intersection(rb.index):
        x, y = _val_series(metrics, ra.loc[[key], "run"].iloc[0]), _val_series(metrics, rb.loc[[key], "run"].iloc[0])
        x, y = x.align(y, join="inner")
        if len(x) < 2:
            continue
        rel = float((np.abs(x - y) / np.maximum(np.abs(x), np.abs(y))).max())
        worst = rel if worst is None else max(worst, rel)
    return worst


def same_curves(metrics: pd.DataFrame, res: pd.DataFrame) -> pd.DataFrame:
    """Per group, each variant whose validation curves equal an earlier variant's (``same_as``)
    within RTOL at every shared step of every same-seed pair; ``max_rel``: the largest
    relative difference found."""
    rows = []
    for group, g in res.groupby("group", sort=False):
        refs: list[str] = []
        for label in sorted(g["label"].unique(), key=_order):
            found = [(ref, rel) for ref in refs if (rel := _max_rel(metrics, g, ref, label)) is not None
                     and rel <= RTOL]
            if found:
                rows.append({"group": group, "label": label, "same_as": found[0][0], "max_rel": found[0][1]})
            else:
                refs.append(label)
    return pd.DataFrame(rows, columns=["group", "label", "same_as", "max_rel"])


def difference_curves(metrics: pd.DataFrame, at: AtStep) -> pd.DataFrame:
    """Each variant minus the baseline of its group at every step both evaluated, paired by
    seed, each at its best learning rate: step, delta, low, high, n, method per (group, label)."""
    chosen = at.table[at.table["chosen"]]
    val = metrics[metrics["run"].isin(chosen.index)].dropna(subset=["val/loss"]) if "val/loss" in metrics else None
    rows = []
    if val is None:
        return pd.DataFrame(rows, columns=["group", "label", "step", "delta", "low", "high", "n", "method"])
    val = val.join(chosen[["group", "label", *PAIR]], on="run")
    for (group, step), here in val.groupby(["group", "step"], sort=True):
        ref = by_pair(here[here["label"] == BASELINE], "val/loss")
        for label in here["label"].unique():
            d = compare(ref, by_pair(here[here["label"] == label], "val/loss")) if label != BASELINE else None
            if d is not None:
                rows.append({"group": group, "label": label, "step": int(step), "delta": d.delta, "low": d.low,
                             "high": d.high, "n": d.n, "method": d.method})
    return pd.DataFrame(rows, columns=["group", "label", "step", "delta", "low", "high", "n", "method"])



def same_note(r: pd.Series) -> str:
    """'no_radius: same curve as ngt_default (...)', one row of ``same_curves``, as the documents say it."""
    apart = "equal" if r["max_rel"] == 0 else f"at most {r['max_rel']:.0e} apart, relative,"
    return (f"{r['label']}: same curve as {r['same_as']} ({apart} at every evaluation of every seed): its "
            "switches had no effect in this run")
