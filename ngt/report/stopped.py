"""Variants that stopped before the comparison step: a run paused at a rung of a halving
sweep (ngt.halving), or one still going. Each is compared with the baseline at the last
step that it and the baseline's compared runs all evaluated, and its line says which step,
so every variant still gets a verdict against seed noise (at that step's noise). A failed
run is left out: where it stopped says nothing about the variant's loss there.
"""

from __future__ import annotations

from typing import Optional

import pandas as pd

from ngt.report.compare import pair_row
from ngt.report.lr import chosen_runs, lr_table
from ngt.report.tables import BASELINE, PAIR, AtStep, val_rows


def last_shared_step(v: pd.DataFrame, baseline: pd.Index, runs: pd.Index) -> Optional[int]:
    """The largest step after 0 that every baseline run and any of ``runs`` evaluated."""
    steps = set.intersection(*(set(v.loc[v["run"] == r, "step"]) for r in baseline)) if len(baseline) else set()
    shared = {int(s) for s in steps & set(v.loc[v["run"].isin(runs), "step"]) if s > 0}
    return max(shared) if shared else None


def _at(v: pd.DataFrame, res: pd.DataFrame, runs: pd.Index, step: int) -> pd.DataFrame:
    """``runs`` that evaluated ``step``, with their loss there as ``val_loss``."""
    here = v[(v["step"] == step) & v["run"].isin(runs)].set_index("run")["val/loss"]
    return res.loc[here.index, ["group", "label", "lr", *PAIR]].assign(val_loss=here)


def earlier(sweep_metrics: pd.DataFrame, res: pd.DataFrame, at: AtStep, row: pd.Series) -> pd.Series:
    """``row`` of a vs-baseline table at the last step its variant and the baseline shared,
    where the variant did not reach the comparison step; else ``row`` as it is."""
    group, label = row["group"], row["other"]
    v = val_rows(sweep_metrics)
    t = at.table
    baseline = t.index[(t["group"] == group) & (t["label"] == BASELINE) & t["chosen"]]
    mine = res[(res["group"] == group) & (res["label"] == label) & (res["status"] != "failed")]
    step = last_shared_step(v, baseline, mine.index)
    if step is None:
        return row
    reached = _at(v, res, mine.index, step)
    chosen = chosen_runs(mine, lr_table(mine, reached)).intersection(reached.index)
    values = pd.concat([_at(v, res, baseline, step), reached.loc[chosen]]).rename(columns={"val_loss": "value"})
    return pd.Series({**pair_row(values, {BASELINE, label}, group, BASELINE, label, f"step {step}"), "stopped_at": step})


def fill(vs: pd.DataFrame, sweep_metrics: pd.DataFrame, res: pd.DataFrame, at: AtStep) -> pd.DataFrame:
    """``vs`` (compare.vs_baseline at the comparison step) with each variant that stopped
    before that step compared at its last step shared with the baseline instead."""
    short = vs["missing"].str.contains(" did not reach ", na=False) & vs["reference"].eq(BASELINE)
    if not short.any():
        return vs
    out = vs.copy()
    for i in vs.index[short]:
        new = earlier(sweep_metrics, res, at, vs.loc[i])
        for col, x in new.items():
            out.at[i, col] = x
    return out
