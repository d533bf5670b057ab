"""Everything the documents and the plots show, computed once from a loaded sweep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pandas as pd

from ngt.report import tables
from ngt.report.idle import idle_parameters
from ngt.report.load import Sweep


@dataclass(frozen=True)
class Analysis:
    sweep: Sweep
    results: pd.DataFrame  # results.csv, one row per run
    at: tables.AtStep  # the fixed-step comparison
    window: Optional[list[int]]  # throughput window of the comparison
    window_given: bool  # True: from --window; False: derived (first evaluation after 0 -> common step)
    speeds: pd.DataFrame  # throughput of the compared runs over ``window``
    params: pd.DataFrame
    seeds: list[tables.SeedRow]
    idle: pd.DataFrame
    ablations: pd.DataFrame

    @property
    def several_groups(self) -> bool:
        return self.results["group"].nunique() > 1


def analyse(sweep: Sweep, window: Optional[list[int]] = None) -> Analysis:
    res = tables.results(sweep, window)
    at = tables.at_step(sweep, res, tables.common_step(sweep))
    compared = [r for r in res.index if r in at.table.index]  # in the results' order: baseline first
    used = window or tables.common_window(sweep, compared, at.step)
    speeds = tables.throughput_table(sweep, res, compared, used)
    return Analysis(
        sweep=sweep, results=res, at=at, window=used, window_given=window is not None, speeds=speeds,
        params=tables.params_table(res), seeds=tables.seed_table(at), idle=idle_parameters(sweep),
        ablations=tables.ablations(at, res, speeds),
    )
