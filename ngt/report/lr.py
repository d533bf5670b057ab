"""Each variant at its own learning rate.

A learning rate shared by every variant favours whichever variant it happens to suit, so a
grid over ``variant x train.lr`` (and seeds) is read as one group in which each variant
has tried several rates. Its best rate is the one with the lowest mean validation loss
over seeds at the comparison step; a rate where a seed failed or fell short of that step
is chosen only where no rate has all its seeds there (a rate that diverges on one seed is
not a rate to recommend). Variants are then compared each at its own best, and pairs are
same-seed runs of the two at their own best rates.

The best is picked on the same evaluation that then compares the variants, which flatters
every variant's figure a little (by as much as the lucky draw among its rates); it flatters
each the same way, and a rate at the edge of the grid is flagged, since the true optimum
may then lie outside it.
"""

from __future__ import annotations

import pandas as pd

KEYS = ["group", "label", "lr"]


def lr_table(res: pd.DataFrame, reached: pd.DataFrame) -> pd.DataFrame:
    """One row per group, variant and learning rate tried: ``runs`` (seeds run), ``reached``
    (those with a loss at the comparison step), ``mean`` (of those), ``best`` (the rate
    chosen for the variant) and ``edge`` ("lowest"/"highest" where the best is the lowest or
    highest rate the variant tried, else None). ``reached``: the runs at the comparison
    step with their ``val_loss``."""
    t = res.groupby(KEYS, dropna=False, sort=False).size().rename("runs").reset_index()
    at = reached.groupby(KEYS, dropna=False, sort=False)["val_loss"].agg(["size", "mean"])
    t = t.join(at.rename(columns={"size": "reached"}), on=KEYS)
    t["reached"] = t["reached"].fillna(0).astype(int)
    t["short"] = t["runs"] - t["reached"]  # seeds failed, diverged or not there yet
    t["best"] = False
    t["edge"] = None
    for _, g in t.groupby(["group", "label"], sort=False):
        ok = g[g["reached"] > 0]
        if ok.empty:
            continue
        best = ok.sort_values(["short", "mean"], kind="stable").index[0]
        t.loc[best, "best"] = True
        t.loc[best, "edge"] = _edge(t.at[best, "lr"], g["lr"])
    return t.drop(columns="short")


def _edge(best: float, tried: pd.Series) -> str | None:
    tried = tried.dropna()
    if tried.nunique() < 2 or pd.isna(best):
        return None
    return "lowest" if best == tried.min() else "highest" if best == tried.max() else None


def chosen_runs(res: pd.DataFrame, lrs: pd.DataFrame) -> pd.Index:
    """The runs at their variant's best learning rate (every seed of it)."""
    best = lrs.loc[lrs["best"], KEYS]
    keyed = res[KEYS].assign(run=res.index).merge(best, on=KEYS, how="inner")
    return pd.Index(keyed["run"])


def tuned(lrs: pd.DataFrame) -> frozenset:
    """The (group, label)s that tried more than one learning rate: an lr grid where any."""
    n = lrs.groupby(["group", "label"])["lr"].nunique()
    return frozenset(n.index[n > 1])
