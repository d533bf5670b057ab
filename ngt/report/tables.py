"""The report's numbers, as DataFrames: one row per run (results.csv) and the comparisons.

Every comparison is made within a group (runs sharing all overrides but the variant, the
seed and the learning rate) and at one step that every compared run reached, so no run is
compared with a baseline that trained longer, on other data or at another size. Within a
group each variant is compared at its own best learning rate (ngt.report.lr).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import pandas as pd

from ngt.report.load import Sweep
from ngt.report.lr import chosen_runs, lr_table
from ngt.records import throughput

BASELINE = "baseline"


def distinct(res: pd.DataFrame, column: str) -> str:
    """The distinct values of a column, in order of appearance; '?' where none is known."""
    seen = [str(v) for v in dict.fromkeys(res[column].dropna()) if str(v)]
    return ", ".join(seen) or "?"


def machine(res: pd.DataFrame) -> str:
    """'NVIDIA H200 · torch 2.9.0 · CUDA 12.8': where the runs trained, as a report's title states it."""
    parts = [distinct(res, "device"), f"torch {distinct(res, 'torch_version')}"]
    if res["cuda_version"].notna().any():
        parts.append(f"CUDA {distinct(res, 'cuda_version')}")
    return " · ".join(parts)


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss is not None and math.isfinite(loss) and loss < 700 else math.nan


def val_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """Evaluations with a finite validation loss (a diverged evaluation is recorded as null)."""
    if "val/loss" not in metrics:
        return metrics.iloc[:0]
    return metrics[np.isfinite(metrics["val/loss"].astype(float))]


def _rate(m: pd.DataFrame, window: list[int], tokens_per_step) -> dict:
    if not len(m):
        return {"window": None, "steps_per_s": None, "tokens_per_s": None}
    elapsed = dict(zip(m["step"].astype(int), m["elapsed_s"]))
    return asdict(throughput(elapsed, window, int(tokens_per_step) if pd.notna(tokens_per_step) else 0))


def results(sweep: Sweep, window: Optional[list[int]] = None) -> pd.DataFrame:
    """One row per run: what results.csv holds. ``window``: [a, b] steps for throughput;
    None = each run's first evaluation after step 0 to its last (the trainer's default)."""
    runs, out = sweep.runs, []
    for run, r in runs.iterrows():
        m = sweep.metrics[sweep.metrics["run"] == run]
        v = val_rows(m)
        last = m.iloc[-1] if len(m) else None
        best = v.loc[v["val/loss"].idxmin()] if len(v) else None
        rate = _rate(m, list(window or []), r["tokens_per_step"])
        out.append({
            "last_eval_step": last["step"] if last is not None else None,
            "val_loss_final": last.get("val/loss") if last is not None else None,
            "train_loss_final": last.get("train/loss") if last is not None else None,
            "val_loss_best": best["val/loss"] if best is not None else None,
            "best_step": best["step"] if best is not None else None,
            "throughput_window": "-".join(str(s) for s in rate["window"]) if rate["window"] else None,
            "steps_per_s": rate["steps_per_s"],
            "tokens_per_s": rate["tokens_per_s"] if r["tokens_per_step"] else None,
        })
    df = pd.concat([runs.reset_index(drop=True), pd.DataFrame(out)], axis=1).set_index("run", drop=False)
    df["ppl_final"] = df["val_loss_final"].map(perplexity)
    df["ppl_full"] = df["val_loss_full"].map(perplexity)
    for col in ("last_eval_step", "best_step", "final_step", "max_steps", "params", "seed", "data_seed", "eval_seed"):
        df[col] = df[col].astype("Int64")
    return df


def csv_columns(sweep: Sweep) -> list[str]:
    return ["run", "name", "variant", "label", *sweep.override_keys, "seed", "data_seed", "eval_seed", "status",
            "message", "lr", "lr_chosen", "final_step", "last_eval_step", "max_steps", "params", "val_loss_final", "ppl_final",
            "train_loss_final", "val_loss_best", "best_step", "val_loss_full", "ppl_full", "throughput_window",
            "steps_per_s", "tokens_per_s", "peak_memory_mb", "peak_memory_kind", "device", "attn_impl", "compiled",
            "updated", "path", *COMPARISON_COLUMNS]


# What the comparisons add to each run's row (NaN where the run is not compared).
COMPARISON_COLUMNS = ["comparison_step", "val_loss_at_step", "elapsed_at_step_s", "equal_time_s", "val_loss_at_time",
                      "time_to_baseline_s"]


def common_step(sweep: Sweep) -> Optional[int]:
    """The largest step at which every completed run has a validation loss (every run with
    an evaluation when none completed): partial and failed runs must not drag the
    comparison back to step 0; they join it when they reached that step too."""
    v = val_rows(sweep.metrics)
    completed = sweep.runs.index[sweep.runs["status"] == "completed"]
    pool = [r for r in completed if r in set(v["run"])] or list(v["run"].unique())
    if not pool:
        return None
    steps = set.intersection(*(set(v.loc[v["run"] == r, "step"]) for r in pool))
    return int(max(steps)) if steps else None


@dataclass(frozen=True)
class AtStep:
    step: Optional[int]
    # compared runs: name, label, group, lr, seed, data_seed, eval_seed, val_loss, ppl, elapsed_s, chosen (at its
    # variant's best lr), baseline (mean of the group's chosen baseline runs), delta
    table: pd.DataFrame
    missing: pd.DataFrame  # runs that did not reach ``step``: name, status, last step
    lrs: pd.DataFrame  # ngt.report.lr.lr_table: the learning rates each variant tried, and its best


PAIR = ["seed", "data_seed", "eval_seed"]  # runs with the same three saw the same batches and evaluation tokens


def by_pair(runs: pd.DataFrame, column: str) -> dict:
    """{(seed, data_seed, eval_seed): value} of ``runs``' finite values in ``column``."""
    v = runs[runs[column].notna()]
    return {tuple(k): x for k, x in zip(v[PAIR].itertuples(index=False), v[column])}


def at_step(sweep: Sweep, res: pd.DataFrame, step: Optional[int]) -> AtStep:
    v = val_rows(sweep.metrics)
    rows = v[v["step"] == step] if step is not None else v.iloc[:0]
    here = rows.set_index("run").reindex(columns=["val/loss", "elapsed_s"])  # both, even where nothing was evaluated
    base = res[["group", "label", "name", "status", "lr", *PAIR, "last_eval_step"]]
    t = base.loc[base.index.isin(here.index)].copy()
    t["val_loss"] = here["val/loss"].reindex(t.index)
    t["ppl"] = t["val_loss"].map(perplexity)
    t["elapsed_s"] = here["elapsed_s"].reindex(t.index)
    lrs = lr_table(res, t)
    t["chosen"] = t.index.isin(chosen_runs(res, lrs))
    baseline_mean = t[(t["label"] == BASELINE) & t["chosen"]].groupby("group")["val_loss"].mean()
    t["baseline"] = t["group"].map(baseline_mean).astype(float)  # no runs compared: an empty column, still float
    t["delta"] = t["val_loss"] - t["baseline"]
    t = t.sort_values(["group", "val_loss"])
    return AtStep(step, t, base.loc[~base.index.isin(here.index)], lrs)


def best_vs_last(res: pd.DataFrame) -> pd.DataFrame:
    t = res[["name", "status", "val_loss_best", "best_step", "val_loss_final", "last_eval_step"]].copy()
    t["gap"] = t["val_loss_final"] - t["val_loss_best"]
    return t


def common_window(sweep: Sweep, compared: list[str], step: Optional[int]) -> Optional[list[int]]:
    """First evaluation after step 0 shared by the compared runs, to the common step:
    step 0 is left out because its time includes start-up (as the original's 500 -> 15000)."""
    if step is None or not compared:
        return None
    m = sweep.metrics
    shared = set.intersection(*(set(m.loc[m["run"] == r, "step"]) for r in compared))
    starts = sorted(s for s in shared if 0 < s < step)
    return [int(starts[0]), step] if starts else None


def throughput_table(sweep: Sweep, res: pd.DataFrame, runs: list[str], window: Optional[list[int]]) -> pd.DataFrame:
    t = res.loc[runs, ["name", "label", "group", "status", "tokens_per_step"]].copy()
    rates = [_rate(sweep.metrics[sweep.metrics["run"] == r], window or [], t.at[r, "tokens_per_step"]) for r in runs]
    t["steps_per_s"] = [x["steps_per_s"] for x in rates]
    t["tokens_per_s"] = [x["tokens_per_s"] if pd.notna(t.at[r, "tokens_per_step"]) else None
                         for x, r in zip(rates, runs)]
    t["steps_per_s"] = t["steps_per_s"].astype(float)
    base = t[t["label"] == BASELINE].groupby("group")["steps_per_s"].mean()
    t["ratio"] = t["steps_per_s"] / t["group"].map(base).astype(float)
    return t


def params_table(res: pd.DataFrame) -> pd.DataFrame:
    t = res[["label", "group", "group_label", "params"]].drop_duplicates(["label", "group"]).copy()
    base = t[t["label"] == BASELINE].set_index("group")["params"]
    t["vs_baseline"] = (t["params"].astype(float) / t["group"].map(base).astype(float)) - 1.0
    return t


def seed_table(at: AtStep) -> pd.DataFrame:
    """Mean and spread over seeds per variant (at its best learning rate) at the common step."""
    g = at.table[at.table["chosen"]].groupby(["group", "label"], sort=False)
    t = g.agg(lr=("lr", "first"), n=("val_loss", "size"), mean=("val_loss", "mean"), std=("val_loss", "std"))
    return t.reset_index()
