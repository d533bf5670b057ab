"""Pairwise comparisons with their seed statistics (ngt.report.stats): every variant against
the baseline of its group, and the original's ablation questions.

Each comparison takes each variant at its own best learning rate (ngt.report.lr) and pairs
its runs by seed. The same function serves the fixed-step comparison and the one at equal
training time: only the loss each run is given differs. One table of rows, one line per
row (``line``): the Summary, report.md, the page and the console all show these.
"""

from __future__ import annotations

import math
from typing import Optional

import pandas as pd

from ngt.report.stats import DIRECTIONAL, INDISTINGUISHABLE, ONE_SEED, PAIRED, WELCH, compare
from ngt.report.tables import BASELINE, by_pair

# The original's pairwise questions (docs/original.md#artifacts): (reference, other, what the difference answers).
ABLATIONS = [
    (BASELINE, "ngt_default", "Does gravity attention (NGT) beat standard attention at matched parameters?"),
    ("ngt_default", "bare", "Do repulsion and the radius cutoff, together, help NGT?"),
    ("ngt_default", "no_repulsion", "Does the repulsion regulariser help?"),
    ("ngt_default", "no_radius", "Does the hard radius cutoff help?"),
    ("ngt_default", "mass_in_value", "Should mass scale the values instead of the scores (repulsion every 4 steps)?"),
    ("ngt_default", "soft_cutoff", "Is a soft radius cutoff (r then trains) better than the hard one?"),
    ("ngt_default", "repulsion_interval_8", "Is repulsion every 8 steps as good as every step?"),
]

# stopped_at: the step of the comparison where the variant stopped before the comparison step (ngt.report.stopped)
COLUMNS = ["group", "reference", "other", "lr_ref", "lr_other", "delta", "low", "high", "n", "method", "p_better",
           "mde", "verdict", "direction", "missing", "stopped_at"]


def pair_row(values: pd.DataFrame, present: set, group: str, ref: str, other: str, reached: str) -> dict:
    """One comparison, other minus reference. ``values``: the chosen runs with the loss to
    compare in ``value``; ``present``: the labels that have any run in the group;
    ``reached``: what a run lacking a value did not reach (for the message)."""
    row = dict.fromkeys(COLUMNS)
    row.update(group=group, reference=ref, other=other)
    absent = [lab for lab in (ref, other) if lab not in present]
    if absent:
        row["missing"] = "no run of " + " and ".join(absent)
        return row
    here = values[values["group"] == group]
    a, b = (by_pair(here[here["label"] == lab], "value") for lab in (ref, other))
    short = [lab for lab, x in ((ref, a), (other, b)) if not x]
    if short:
        row["missing"] = f"{' and '.join(short)} did not reach {reached}"
        return row
    d = compare(a, b)
    lr = here.groupby("label")["lr"].first()
    row.update(lr_ref=lr[ref], lr_other=lr[other], delta=d.delta, low=d.low, high=d.high, n=d.n, method=d.method,
               p_better=d.p_better, mde=d.mde, verdict=d.verdict, direction=d.direction)
    return row


def _frame(rows: list[dict], extra: tuple[str, ...] = ()) -> pd.DataFrame:
    t = pd.DataFrame(rows, columns=[*COLUMNS, *extra])
    for col in ("lr_ref", "lr_other", "delta", "low", "high", "p_better", "mde"):
        t[col] = t[col].astype(float)
    t["n"] = t["n"].astype("Int64")
    t["stopped_at"] = t["stopped_at"].astype("Int64")
    return t


def vs_baseline(values: pd.DataFrame, res: pd.DataFrame, reached: str) -> pd.DataFrame:
    """Every variant against the baseline of its group, in the results' order; groups without
    a baseline run have no rows (nothing to compare against)."""
    rows = []
    for group, g in res.groupby("group", sort=False):
        labels = list(dict.fromkeys(g["label"]))
        if BASELINE in labels:
            rows += [pair_row(values, set(labels), group, BASELINE, lab, reached) for lab in labels if lab != BASELINE]
    return _frame(rows)


def ablations(values: pd.DataFrame, res: pd.DataFrame, reached: str, speeds: pd.DataFrame) -> pd.DataFrame:
    """One row per question and group holding either variant (a question with neither
    variant anywhere gets one row, saying so), with the ``question`` and the other's steps/s
    over the reference's (``speed_ratio``, from ``speeds``: ngt.report.tables.throughput_table)."""
    present = res.groupby("group", sort=False)["label"].agg(set)
    rows = []
    for ref, other, question in ABLATIONS:
        groups = [g for g, labels in present.items() if ref in labels or other in labels] or [None]
        for group in groups:
            row = pair_row(values, present.get(group, set()), group, ref, other, reached)
            sp = speeds[speeds["group"] == group].groupby("label")["steps_per_s"].mean()
            ratio = sp[other] / sp[ref] if ref in sp and other in sp and sp[ref] > 0 else None
            rows.append({**row, "question": question, "speed_ratio": ratio})
    t = _frame(rows, ("question", "speed_ratio"))
    t["speed_ratio"] = t["speed_ratio"].astype(float)
    return t


def named(r: pd.Series, side: str, tuned: frozenset = frozenset()) -> str:
    """The variant on ``side`` ("other" or "reference") of a comparison row, with its chosen
    learning rate where it tried several (``tuned``: those (group, label)s)."""
    lr = r["lr_other" if side == "other" else "lr_ref"]
    shown = (r["group"], r[side]) in tuned and not math.isnan(lr)
    return r[side] + (f" (lr {lr:.3g})" if shown else "")


def variant(r: pd.Series, tuned: frozenset = frozenset()) -> str:
    """The compared variant of a vs-baseline row as a table or a picture names it: its rate
    where it tried several, and its step where it stopped before the comparison step."""
    return named(r, "other", tuned) + (f" (step {r['stopped_at']})" if pd.notna(r["stopped_at"]) else "")


def verdict_words(r: pd.Series) -> str:
    """'beyond noise (worse)', 'indistinguishable' or 'one seed: directional (better)'."""
    if r["method"] == ONE_SEED:
        return f"one seed: {DIRECTIONAL} ({r['direction']})"
    return INDISTINGUISHABLE if r["verdict"] == INDISTINGUISHABLE else f"{r['verdict']} ({r['direction']})"


def line(r: pd.Series, group_label: str = "", tuned: frozenset = frozenset()) -> str:
    """'ngt_default vs baseline: +0.0210 [+0.0120, +0.0300], beyond noise (worse); 3 paired
    seeds, P(better) 0.00', as every document writes the comparison. ``tuned``: see ``named``;
    ``group_label``: the group, where there are several."""
    where = f" [{group_label}]" if group_label else ""
    at = f" at step {r['stopped_at']}" if pd.notna(r.get("stopped_at")) else ""
    head = f"{named(r, 'other', tuned)} vs {named(r, 'reference', tuned)}{where}{at}: "
    if isinstance(r["missing"], str):
        return head + f"not compared ({r['missing']})"
    if r["method"] == ONE_SEED:
        return head + f"{r['delta']:+.4f}, {verdict_words(r)}"
    how = f"{r['n']} paired seeds" if r["method"] == PAIRED else f"{WELCH}, {r['n']}+ seeds a side"
    detectable = f", detectable from ±{r['mde']:.4f}" if r["verdict"] == INDISTINGUISHABLE else ""
    return (head + f"{r['delta']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}], {verdict_words(r)}; {how}, "
            f"P(better) {r['p_better']:.2f}{detectable}")


def lines(t: pd.DataFrame, group_labels: Optional[dict] = None, tuned: frozenset = frozenset()) -> list[str]:
    """``line`` for each row of a comparison table; ``group_labels``: {group: label} where the
    report has several groups."""
    return [line(r, (group_labels or {}).get(r["group"], ""), tuned) for _, r in t.iterrows()]
