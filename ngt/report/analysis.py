"""Everything the documents and the plots show, computed once from a loaded sweep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pandas as pd

from ngt.report import compare, curves, stopped, tables
from ngt.report.equal_time import EqualTime, equal_time
from ngt.report.idle import idle_parameters
from ngt.report.load import Sweep
from ngt.report.lr import chosen_runs, tuned as tuned_labels


@dataclass(frozen=True)
class Analysis:
    sweep: Sweep
    results: pd.DataFrame  # results.csv, one row per run
    at: tables.AtStep  # the fixed-step comparison, with the learning rates each variant tried (at.lrs)
    window: Optional[list[int]]  # throughput window of the comparison
    window_given: bool  # True: from --window; False: derived (first evaluation after 0 -> common step)
    speeds: pd.DataFrame  # throughput of the compared runs over ``window``
    params: pd.DataFrame
    seeds: pd.DataFrame  # per group and variant at its best lr: lr, n, mean, std at the common step
    vs_baseline: pd.DataFrame  # ngt.report.compare: every variant against its group's baseline at the common step
    time: EqualTime  # the same at equal training time, and the time to reach the baseline's loss
    vs_baseline_time: pd.DataFrame  # as vs_baseline, at ``time.times``
    same: pd.DataFrame  # ngt.report.curves.same_curves: variants whose curves equal another's
    idle: pd.DataFrame
    ablations: pd.DataFrame

    @property
    def several_groups(self) -> bool:
        return self.results["group"].nunique() > 1

    @property
    def tuned(self) -> frozenset:
        """The (group, label)s that tried several learning rates (empty unless an lr grid)."""
        return tuned_labels(self.at.lrs)

    def group_labels(self) -> dict:
        """{group: its label}, where the report has several groups (else empty: nothing to tell apart)."""
        if not self.several_groups:
            return {}
        return self.results.drop_duplicates("group").set_index("group")["group_label"].to_dict()

    def with_group(self, names, groups) -> list[str]:
        """Each name with its group's label where the report has several groups."""
        labels = self.group_labels()
        return [n + (f" [{labels[g]}]" if labels.get(g) else "") for n, g in zip(names, groups)]

    def equal_times(self) -> str:
        """The equal training time of the comparison against the baseline, per group where there are several."""
        compared = set(self.vs_baseline["group"])
        groups = [g for g in self.time.times if g in compared]
        return ", ".join(self.with_group([f"{self.time.times[g]:.1f} s" for g in groups], groups)) or "n/a"

    def verdict_lines(self, at_time: bool = False) -> list[str]:
        """One line per variant against its baseline at the comparison step (``at_time``: at
        equal training time, ``equal_times()``), e.g. 'ngt_default vs baseline: +0.0210
        [+0.0120, +0.0300], beyond noise (worse); 3 paired seeds, P(better) 0.00': the lines of
        the Summary's first section, for a console too."""
        return compare.lines(self.vs_baseline_time if at_time else self.vs_baseline, self.group_labels(), self.tuned)


def _values(t: pd.DataFrame, column: str) -> pd.DataFrame:
    """The chosen runs with the loss to compare in ``value``."""
    return t[t["chosen"]].assign(value=t[column])


def _per_run(res: pd.DataFrame, at: tables.AtStep, time: EqualTime, chosen: pd.Index) -> pd.DataFrame:
    """results.csv's comparison columns (tables.COMPARISON_COLUMNS), NaN where a run is not compared."""
    res = res.copy()
    res["lr_chosen"] = res.index.isin(chosen)
    res["comparison_step"] = at.step
    res["comparison_step"] = res["comparison_step"].astype("Int64")
    res["val_loss_at_step"] = at.table["val_loss"].reindex(res.index)
    res["elapsed_at_step_s"] = at.table["elapsed_s"].reindex(res.index)
    for col in ("equal_time_s", "val_loss_at_time", "time_to_baseline_s"):
        res[col] = time.table[col].reindex(res.index).astype(float)
    return res


def analyse(sweep: Sweep, window: Optional[list[int]] = None) -> Analysis:
    res = tables.results(sweep, window)
    at = tables.at_step(sweep, res, tables.common_step(sweep))
    compared = [r for r in res.index if r in at.table.index]  # in the results' order: baseline first
    used = window or tables.common_window(sweep, compared, at.step)
    speeds = tables.throughput_table(sweep, res, compared, used)
    time = equal_time(sweep, at)
    chosen = chosen_runs(res, at.lrs)
    reached = f"step {at.step}"
    return Analysis(
        sweep=sweep, results=_per_run(res, at, time, chosen), at=at, window=used, window_given=window is not None,
        speeds=speeds, params=tables.params_table(res), seeds=tables.seed_table(at),
        vs_baseline=stopped.fill(compare.vs_baseline(_values(at.table, "val_loss"), res, reached), sweep.metrics,
                                 res, at),
        time=time,
        vs_baseline_time=compare.vs_baseline(_values(time.table, "val_loss_at_time"), res, reached),
        same=curves.same_curves(sweep.metrics, res), idle=idle_parameters(sweep),
        ablations=compare.ablations(_values(at.table, "val_loss"), res, reached,
                                    speeds[speeds.index.isin(at.table.index[at.table["chosen"]])]),
    )
