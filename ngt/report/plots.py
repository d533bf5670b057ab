"""Plotly figures: losses, throughput, per-layer NGT diagnostics, 3D coordinates."""

from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ngt.report.analysis import Analysis
from ngt.report.coords import Coords

DIAGNOSTICS = [("gamma_mean", "gamma (mean over heads)"), ("radius", "radius r"), ("entropy", "attention entropy"),
               ("cut_frac", "fraction cut by r"), ("beta_mean", "beta (mean over heads)")]


def colours(a: Analysis) -> dict[str, str]:
    """One colour per variant label, the same on every page; the baseline first."""
    labels = sorted(a.results["label"].unique(), key=lambda x: (x != "baseline", x))
    palette = plotly.colors.qualitative.Plotly + plotly.colors.qualitative.Dark24
    return {lab: palette[i % len(palette)] for i, lab in enumerate(labels)}


def _band(fig: go.Figure, x, mean, std, colour: str, name: str, row: int, col: int) -> None:
    rgb = plotly.colors.hex_to_rgb(colour)
    fig.add_trace(go.Scatter(
        x=np.concatenate([x, x[::-1]]), y=np.concatenate([mean + std, (mean - std)[::-1]]), fill="toself", mode="lines",
        fillcolor=f"rgba({rgb[0]},{rgb[1]},{rgb[2]},0.2)", line={"width": 0}, hoverinfo="skip",
        legendgroup=name, showlegend=False), row=row, col=col)


def losses(a: Analysis) -> go.Figure:
    """Validation (solid) and train (dotted) loss against step, with a mean ± std band over
    seeds where a variant has several, and each run against its training time."""
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("against step (band: ±1 std over seeds)", "against training time"))
    colour = colours(a)
    m, res = a.sweep.metrics, a.results
    for (group, label), runs in res.groupby(["group", "label"], sort=False):
        c = colour[label]
        seeded = len(runs) > 1 and runs["seed"].nunique() > 1
        for key, dash, kind in (("val/loss", "solid", "val"), ("train/loss", "dot", "train")):
            if key not in m:
                continue
            if seeded:
                pivot = m[m["run"].isin(runs.index)].pivot_table(index="step", columns="run", values=key)
                pivot = pivot.dropna()  # steps every seed reached
                name = f"{label} ({len(runs)} seeds)" + (f" [{runs['group_label'].iloc[0]}]"
                                                         if a.several_groups and runs["group_label"].iloc[0] else "")
                x, mean, std = pivot.index.to_numpy(), pivot.mean(axis=1).to_numpy(), pivot.std(axis=1).to_numpy()
                _band(fig, x, mean, std, c, name, 1, 1)
                fig.add_trace(go.Scatter(x=x, y=mean, name=f"{name} · {kind}", legendgroup=name,
                                         line={"color": c, "dash": dash}), row=1, col=1)
            for run, r in runs.iterrows():
                rm = m[m["run"] == run]
                if not seeded:
                    fig.add_trace(go.Scatter(x=rm["step"], y=rm[key], name=f"{r['name']} · {kind}",
                                             legendgroup=r["name"], line={"color": c, "dash": dash}), row=1, col=1)
                fig.add_trace(go.Scatter(x=rm["elapsed_s"], y=rm[key], name=f"{r['name']} · {kind}",
                                         legendgroup=name if seeded else r["name"], showlegend=False,
                                         line={"color": c, "dash": dash, "width": 1 if seeded else 2}),
                              row=1, col=2)
    fig.update_xaxes(title_text="step", row=1, col=1)
    fig.update_xaxes(title_text="training seconds (evaluation excluded)", row=1, col=2)
    fig.update_yaxes(title_text="loss (solid: validation, dotted: train)", row=1, col=1)
    fig.update_layout(title="Loss", height=560, hovermode="closest")
    return fig


def throughput(a: Analysis) -> go.Figure:
    t = a.speeds.dropna(subset=["steps_per_s"])
    colour = colours(a)
    text = [f"{r:.2f}x baseline" if pd.notna(r) else "" for r in t["ratio"]]
    fig = go.Figure(go.Bar(
        x=t["name"], y=t["steps_per_s"], text=text, textposition="outside",
        marker_color=[colour[lab] for lab in t["label"]],
        customdata=np.stack([t["tokens_per_s"].astype(float).fillna(np.nan)], axis=-1),
        hovertemplate="%{x}<br>%{y:.3f} steps/s<br>%{customdata[0]:.0f} tokens/s<extra></extra>"))
    lo, hi = a.window
    fig.update_layout(title=f"Throughput over steps {lo} → {hi}", yaxis_title="steps/s", height=520)
    return fig


def diagnostics(a: Analysis) -> go.Figure:
    """One panel per diagnostic (rows) and layer (columns), one line per NGT run."""
    m, res = a.sweep.metrics, a.results
    ngt = res[res["arch"] == "ngt"]
    # From the rows themselves: a run whose recorded config is damaged has no n_layers.
    layers = 1 + max((int(g.group(1)) for col in m.columns if (g := re.match(r"ngt/L(\d+)/", col))), default=0)
    fig = make_subplots(rows=len(DIAGNOSTICS), cols=layers, shared_xaxes=True, vertical_spacing=0.04,
                        horizontal_spacing=0.02 if layers > 4 else 0.06,
                        column_titles=[f"layer {i}" for i in range(layers)],
                        row_titles=[title for _, title in DIAGNOSTICS])
    colour = colours(a)
    for run, r in ngt.iterrows():
        rm = m[m["run"] == run]
        for row, (key, _) in enumerate(DIAGNOSTICS, start=1):
            for layer in range(layers):
                col = f"ngt/L{layer}/{key}"
                if col not in rm or rm[col].isna().all():
                    continue
                fig.add_trace(go.Scatter(x=rm["step"], y=rm[col], name=r["name"], legendgroup=r["name"],
                                         showlegend=row == 1 and layer == 0, mode="lines+markers",
                                         line={"color": colour[r["label"]]}, marker={"size": 4}),
                              row=row, col=layer + 1)
    fig.update_xaxes(title_text="step", row=len(DIAGNOSTICS))
    fig.update_layout(title="NGT diagnostics per layer", height=220 * len(DIAGNOSTICS) + 120)
    return fig


def coords(c: Coords, name: str) -> go.Figure:
    span = np.ptp(c.mass) or 1.0
    size = 4 + 14 * (c.mass - c.mass.min()) / span
    hover = [f"{html.escape(label)}<br>position {i}<br>mass {mass:.4f}"
             for i, (label, mass) in enumerate(zip(c.labels, c.mass))]
    fig = go.Figure(go.Scatter3d(
        x=c.pcs[:, 0], y=c.pcs[:, 1], z=c.pcs[:, 2], mode="markers", hovertext=hover, hoverinfo="text",
        marker={"color": c.mass, "size": size, "colorscale": "Viridis", "opacity": 0.85,
                "colorbar": {"title": {"text": "mass"}}}))
    axis = [f"PC{i + 1} ({v:.1%} of variance)" for i, v in enumerate(c.explained)]
    fig.update_layout(
        title=f"{name}: last layer's z, {len(c.mass)} validation tokens, checkpoint at step {c.step}",
        scene={"xaxis_title": axis[0], "yaxis_title": axis[1], "zaxis_title": axis[2]},
        height=720, margin={"l": 0, "r": 0, "b": 0})
    return fig


def losses_zoom(a: Analysis) -> go.Figure:
    """Validation loss over the last half of the steps up to the comparison step, one line per
    compared run at its best learning rate: zoomed in, so curves that overlap over the whole
    run (the first steps span the most loss) come apart."""
    t = a.at.table[a.at.table["chosen"]]
    m = a.sweep.metrics
    half = m[m["run"].isin(t.index) & (m["step"] >= (a.at.step or 0) / 2) & (m["step"] <= (a.at.step or 0))]
    colour = colours(a)
    fig = go.Figure()
    for run, r in t.sort_values("name").iterrows():
        rm = half[half["run"] == run]
        fig.add_trace(go.Scatter(x=rm["step"], y=rm["val/loss"], name=r["name"], mode="lines+markers",
                                 line={"color": colour[r["label"]]}))
    fig.update_layout(title=f"Validation loss, second half of the steps to {a.at.step} (zoomed)", xaxis_title="step",
                      yaxis_title="validation loss", height=440, hovermode="x unified")
    return fig
