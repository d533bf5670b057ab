"""The pictures that answer the screen's question at a glance: each variant's difference to
the baseline with its noise, at the comparison step and at equal training time, and that
difference over the steps. Their numbers are the rows of ``Analysis.vs_baseline`` and
``vs_baseline_time``, the same rows Summary.md's Answer writes as lines.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ngt.report.analysis import Analysis
from ngt.report.compare import line, variant, verdict_words
from ngt.report.curves import difference_curves
from ngt.report.plots import colours
from ngt.report.stats import BEYOND, ONE_SEED

# Better and worse in colour, noise grey: the colour alone says which side of zero a verdict is on.
_VERDICT_COLOUR = {"better": "#1a9850", "worse": "#d73027", "noise": "#7f7f7f"}


def headline_rows(a: Analysis, t: pd.DataFrame) -> pd.DataFrame:
    """The compared rows of a vs-baseline table with what the headline draws: ``shown`` (the
    y label), ``words`` (the verdict as Summary.md says it) and ``hover`` (its whole line)."""
    t = t[t["missing"].isna()]
    labels = a.group_labels()
    shown = a.with_group([variant(r, a.tuned) for _, r in t.iterrows()], t["group"])
    return t.assign(shown=shown, words=[verdict_words(r) for _, r in t.iterrows()],
                    hover=[line(r, labels.get(r["group"], ""), a.tuned) for _, r in t.iterrows()])


def _points(fig: go.Figure, t: pd.DataFrame, col: int, legend: set) -> None:
    """One trace per kind of verdict, so the legend reads as a key (each kind in it once:
    ``legend`` holds the kinds already there)."""
    kinds = [("beyond noise, better", (t["verdict"] == BEYOND) & (t["direction"] == "better"), "better", "circle"),
             ("beyond noise, worse", (t["verdict"] == BEYOND) & (t["direction"] == "worse"), "worse", "circle"),
             ("indistinguishable", (t["verdict"] != BEYOND) & (t["method"] != ONE_SEED), "noise", "circle"),
             ("one seed (directional)", t["method"] == ONE_SEED, "noise", "circle-open")]
    for name, pick, colour, symbol in kinds:
        k = t[pick]
        if k.empty:
            continue
        fig.add_trace(go.Scatter(
            x=k["delta"], y=k["shown"], mode="markers+text", name=name, legendgroup=name, showlegend=name not in legend,
            text=k["words"], textposition="top center", hovertext=k["hover"], hoverinfo="text",
            marker={"color": _VERDICT_COLOUR[colour], "size": 11, "symbol": symbol, "line": {"width": 2}},
            error_x={"type": "data", "symmetric": False, "array": (k["high"] - k["delta"]).fillna(0),
                     "arrayminus": (k["delta"] - k["low"]).fillna(0), "color": _VERDICT_COLOUR[colour]}),
            row=1, col=col)
        legend.add(name)


def _padded(t: pd.DataFrame) -> list[float]:
    """The x range holding zero, every point and interval, and room for the verdict labels centred above them."""
    ends = pd.concat([t["delta"], t["low"], t["high"], pd.Series([0.0])]).dropna()
    lo, hi = float(ends.min()), float(ends.max())
    pad = 0.3 * (hi - lo) or 0.01
    return [lo - pad, hi + pad]


def headline(a: Analysis) -> go.Figure:
    """Δ validation loss to the baseline with its 95% interval, per variant, sorted, at the
    comparison step (left) and at equal training time (right)."""
    step, time = headline_rows(a, a.vs_baseline), headline_rows(a, a.vs_baseline_time)
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.03, subplot_titles=(
        f"at step {a.at.step}", f"at equal training time ({a.equal_times()})"))
    legend: set = set()
    _points(fig, step, 1, legend)
    _points(fig, time, 2, legend)
    order = step.sort_values("delta")["shown"].tolist()  # the lowest (best) loss on top
    # headroom above the top point for its verdict label
    fig.update_yaxes(categoryorder="array", categoryarray=order[::-1], range=[-0.5, len(order) - 0.2], row=1, col=1)
    for col, t in ((1, step), (2, time)):
        fig.update_xaxes(range=_padded(t), row=1, col=col)
        fig.add_vline(x=0, line_dash="dash", line_color="#444", row=1, col=col)
        fig.update_xaxes(title_text="Δ val loss vs baseline (95% interval; < 0: lower, better)", row=1, col=col)
    fig.update_layout(title="Does a variant beat the baseline by more than seed noise?",
                      height=170 + 48 * max(len(order), 2), margin={"t": 90}, hovermode="closest",
                      legend={"orientation": "h", "y": -0.25 if len(order) > 4 else -0.5})
    return fig


def _band(fig: go.Figure, d: pd.DataFrame, colour: str, name: str) -> None:
    rgb = plotly.colors.hex_to_rgb(colour)
    x = d["step"].to_numpy()
    fig.add_trace(go.Scatter(
        x=np.concatenate([x, x[::-1]]), y=np.concatenate([d["high"].to_numpy(), d["low"].to_numpy()[::-1]]),
        fill="toself", mode="lines", fillcolor=f"rgba({rgb[0]},{rgb[1]},{rgb[2]},0.15)", line={"width": 0},
        hoverinfo="skip", legendgroup=name, showlegend=False))


def difference_over_steps(a: Analysis) -> go.Figure:
    """Each variant's validation loss minus the baseline's at the same step and seed: the mean
    over seeds and its 95% interval as a band (one seed: the line alone)."""
    d = difference_curves(a.sweep.metrics, a.at)
    colour = colours(a)
    fig = go.Figure()
    for (group, label), c in d.groupby(["group", "label"], sort=False):
        (name,) = a.with_group([label], [group])
        if c["low"].notna().all():
            _band(fig, c, colour[label], name)
        fig.add_trace(go.Scatter(x=c["step"], y=c["delta"], name=name, legendgroup=name, mode="lines+markers",
                                 line={"color": colour[label]}, customdata=c[["n", "method"]].astype(str),
                                 hovertemplate="step %{x}<br>Δ %{y:+.4f}<br>%{customdata[0]} seeds, "
                                               "%{customdata[1]}<extra>" + name + "</extra>"))
    fig.add_hline(y=0, line_dash="dash", line_color="#444")
    fig.update_layout(title="Difference to the baseline over training (same step and seed; band: 95% interval)",
                      xaxis_title="step", yaxis_title="Δ val loss vs baseline", height=420, hovermode="closest")
    return fig
