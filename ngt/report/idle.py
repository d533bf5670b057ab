"""Learned parameters that trained for nothing (docs/model.md#idle-parameters).

The config says when it must happen; the logged diagnostics show that it did:

- radius ``r`` with the hard cutoff is only compared with d2 to build a mask, so it gets
  no gradient (and with no cutoff it is not used at all): ``ngt/L{i}/radius`` stays at its
  initial value. Where the cut fraction stays 0, the cutoff did not even mask anything.
- ``beta`` without mass in the scores (and without the soft cutoff's factor) is a per-head
  constant added to every score of a row, which softmax ignores: whatever value it drifts
  to, the output is the same.
"""

from __future__ import annotations

import pandas as pd

from ngt.report.load import Sweep


def _layer_cols(m: pd.DataFrame, key: str) -> list[str]:
    return [c for c in m.columns if c.startswith("ngt/L") and c.endswith(f"/{key}") and m[c].notna().any()]


def _radius(r: pd.Series, m: pd.DataFrame) -> dict | None:
    if r["radius"] == "soft":
        return None
    why = ("hard cutoff: r only builds a mask, so it gets no gradient" if r["radius"] == "hard"
           else "no cutoff: r is never used")
    cols = _layer_cols(m, "radius")
    if not cols:
        return {"parameter": "radius r", "why": why, "evidence": "no radius diagnostics logged"}
    values = m[cols].to_numpy()
    span = f"steps {int(m['step'].min())}-{int(m['step'].max())}"
    if (values.max(axis=0) - values.min(axis=0)).max() == 0:
        layers = ", ".join(f"{v:.4f}" for v in values[0])
        evidence = f"r unchanged at every evaluation ({span}) in all {len(cols)} layers: {layers}"
    else:
        evidence = f"unexpected: r moved ({values.min():.4f} to {values.max():.4f}, {span})"
    cut = _layer_cols(m, "cut_frac")
    if r["radius"] == "hard" and cut:
        peak = m[cut].to_numpy().max()
        evidence += ("; the cutoff never cut a pair (cut fraction 0), so r had no effect at all" if peak == 0
                     else f"; the cutoff masked up to {peak:.1%} of pairs at the initial r")
    return {"parameter": "radius r", "why": why, "evidence": evidence}


def _beta(r: pd.Series, m: pd.DataFrame) -> dict | None:
    if r["mass"] == "scores" or r["radius"] == "soft":
        return None
    why = "mass not in the scores: beta is a per-head constant on every score, which softmax ignores"
    cols = _layer_cols(m, "beta_mean")
    if not cols:
        return {"parameter": "beta", "why": why, "evidence": "no beta diagnostics logged"}
    drift = m[cols].abs().to_numpy().max()
    return {"parameter": "beta", "why": why,
            "evidence": f"beta_mean stays at most {drift:.1e} from its initial 0 over all layers and evaluations: "
                        "no effect on the output whatever its value"}


def idle_parameters(sweep: Sweep) -> pd.DataFrame:
    """One row per NGT run and idle parameter: name, parameter, why, evidence."""
    rows = []
    for run, r in sweep.runs[sweep.runs["arch"] == "ngt"].iterrows():
        m = sweep.metrics[sweep.metrics["run"] == run]
        if m.empty:  # never evaluated: it trained nothing, so nothing in it trained for nothing
            continue
        for found in (_radius(r, m), _beta(r, m)):
            if found:
                rows.append({"name": r["name"], **found})
    return pd.DataFrame(rows, columns=["name", "parameter", "why", "evidence"])
