"""The probe words page, ``plots/probes.html``: what the NGT runs of a sweep recorded in
their probes.jsonl (ngt/probes.py), for the question the original's probes asked, whether
words of related meaning move together in the coordinate space.

On top, every NGT run side by side: a group's mean distance within it and to the other
groups, against step. Below, per run, the words' positions over training, relative to
each evaluation's mean and projected on the two principal axes of all that run's
evaluations together, so every step is drawn in the same axes. Like the report's other
pages it loads plotly.js from ``plots/``.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
import plotly.offline
import torch
from plotly.subplots import make_subplots

from ngt.errors import NGTError
from ngt.probes import group_distances, read_probes
from ngt.report.coords import pca3
from ngt.report.files import write_text

PAGE = "probes.html"
PLOTLY_JS = "plotly.min.js"  # where the report's pages load plotly.js from, in plots/ (ngt.report.pages uses it)
_SYMBOLS = ("circle", "square", "diamond", "cross", "triangle-up", "x", "star", "hexagon")
_COLUMNS = 3  # distance panels per row
_ABOUT = (
    "Each probe word is taken at fixed occurrences, chosen once from the corpus (validation split first), each "
    "in its own context window ending at the word; what is drawn is the last layer's coordinates z of the "
    "word's last token at every evaluation. <b>Distances</b>: the mean distance between occurrences of two "
    "different words of a group (solid) and from the group's occurrences to the other groups' (dashed); a group "
    "whose words move together keeps solid below dashed. <b>Positions</b>: per run, a line is a word's mean "
    "position over its occurrences, evaluation after evaluation, its large marker the last one; faint markers "
    "are the single occurrences at that last evaluation. Projection: each evaluation's positions relative to "
    "its mean (so the drift of the whole cloud over training is left out, as distances leave it out), on the two "
    "principal axes of all of the run's evaluations together.")
Records = list[dict[str, Any]]


def _runs_records(runs: pd.DataFrame) -> tuple[dict[str, Records], list[str]]:
    """Each NGT run's probe records by run name, in the runs' order; and why a run has none."""
    found, notes = {}, []
    for _, r in runs[runs["arch"] == "ngt"].iterrows():
        try:
            records = read_probes(Path(r["path"]))
        except (NGTError, OSError) as e:
            notes.append(f"{r['name']}: probe records unreadable ({e})")
            continue
        if records:
            found[r["name"]] = records
        else:
            notes.append(f"{r['name']}: no probe records (probes=none, no probe word in its corpus, or not "
                         "evaluated yet)")
    return found, notes


def _group_colours(runs: dict[str, Records]) -> dict[str, str]:
    """One colour per group, the same in every panel, in the order groups first appear."""
    groups = dict.fromkeys(r["group"] for records in runs.values() for r in records)
    palette = plotly.colors.qualitative.Plotly + plotly.colors.qualitative.Dark24
    return {g: palette[i % len(palette)] for i, g in enumerate(groups)}


def distance_table(records: Records) -> pd.DataFrame:
    """step, group, within, across: ``group_distances`` of each evaluation."""
    by_step: dict[int, Records] = {}
    for r in records:
        by_step.setdefault(r["step"], []).append(r)
    rows = [{"step": step, "group": g, **d} for step, rs in sorted(by_step.items())
            for g, d in group_distances(rs).items()]
    return pd.DataFrame(rows).reindex(columns=["step", "group", "within", "across"])


def distances(runs: dict[str, Records], colour: dict[str, str]) -> go.Figure:
    """One panel per run, side by side, sharing the distance axis."""
    cols = min(len(runs), _COLUMNS)
    rows = math.ceil(len(runs) / cols)
    fig = make_subplots(rows=rows, cols=cols, shared_yaxes=True, horizontal_spacing=0.03, vertical_spacing=0.12,
                        subplot_titles=[html.escape(n) for n in runs])
    shown: set[tuple[str, str]] = set()
    for i, records in enumerate(runs.values()):
        for group, t in distance_table(records).groupby("group", sort=False):
            for kind, dash in (("within", "solid"), ("across", "dash")):
                if t[kind].isna().all():
                    continue
                fig.add_trace(go.Scatter(
                    x=t["step"], y=t[kind], mode="lines+markers", name=f"{group} · {kind}",
                    legendgroup=f"{group}{kind}", showlegend=(group, kind) not in shown,
                    line={"color": colour[group], "dash": dash}, marker={"size": 4}),
                    row=i // cols + 1, col=i % cols + 1)
                shown.add((group, kind))
    fig.update_xaxes(title_text="step", row=rows)
    fig.update_yaxes(title_text="mean distance in z", col=1)
    fig.update_layout(title="Probe words: distance within each group (solid) and to the other groups (dashed)",
                      height=340 * rows + 140)
    return fig


def _projected(records: Records) -> tuple[pd.DataFrame, np.ndarray]:
    """The records with their position (x, y) on the first two principal axes of all of
    them, each taken relative to the mean of its evaluation's records; and the share of the
    variance those axes explain. Relative, because the whole cloud drifts over training
    (every coordinate is LayerNormed from the same positions), and that drift would take
    the first axis, leaving the words' places relative to each other, the question here,
    squeezed into a corner."""
    df = pd.DataFrame([{k: r[k] for k in ("step", "group", "word", "occurrence", "split", "offset")}
                       for r in records])
    z = pd.DataFrame([r["z"] for r in records])
    z -= z.groupby(df["step"]).transform("mean")
    pcs, explained = pca3(torch.tensor(z.to_numpy(), dtype=torch.float64))
    return df.assign(x=pcs[:, 0], y=pcs[:, 1]), explained[:2]


def positions(name: str, records: Records, colour: dict[str, str]) -> go.Figure:
    """The run's probe words: a trajectory per word over the evaluations, and its
    occurrences at the last one."""
    df, explained = _projected(records)
    last = df["step"].max()
    # Words share their group's colour and differ by marker.
    symbol = {w: _SYMBOLS[i % len(_SYMBOLS)] for _, words in df.groupby("group", sort=False)["word"]
              for i, w in enumerate(words.unique())}
    fig = go.Figure()
    for (group, word), w in df.groupby(["group", "word"], sort=False):
        path = w.groupby("step")[["x", "y"]].mean().reset_index()
        label = html.escape(f"{word} ({group})")
        fig.add_trace(go.Scatter(
            x=path["x"], y=path["y"], mode="lines+markers", name=html.escape(word), legendgroup=group,
            legendgrouptitle_text=html.escape(group), line={"color": colour[group], "width": 1.5},
            marker={"symbol": symbol[word], "size": np.where(path["step"] == last, 13, 5)}, hoverinfo="text",
            hovertext=[f"{label}<br>step {s}: mean over its occurrences" for s in path["step"]]))
        at_last = w[w["step"] == last]
        fig.add_trace(go.Scatter(
            x=at_last["x"], y=at_last["y"], mode="markers", legendgroup=group, showlegend=False, hoverinfo="text",
            marker={"symbol": symbol[word], "size": 7, "color": colour[group], "opacity": 0.35},
            hovertext=[f"{label} #{o.occurrence}<br>{o.split} split, token {o.offset}<br>step {last}"
                       for o in at_last.itertuples()]))
    axis = [f"PC{i + 1} ({v:.1%} of the variance over all evaluations)" for i, v in enumerate(explained)]
    fig.update_layout(title=f"{html.escape(name)}: probe words in z, steps {df['step'].min()} → {last}",
                      xaxis_title=axis[0], yaxis={"title": axis[1], "scaleanchor": "x"}, height=640,
                      hovermode="closest")
    return fig


def _page(figures: list[go.Figure], notes: list[str]) -> str:
    plots = "".join(f.to_html(full_html=False, include_plotlyjs=False, config={"responsive": True}) for f in figures)
    listed = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return ('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>probe words</title>'
            f'<script src="{PLOTLY_JS}"></script><style>body{{font-family:system-ui,sans-serif;margin:1.5em;'
            'max-width:1400px}.note{color:#555}</style></head>\n<body>\n<p><a href="../index.html">index</a></p>'
            f'<h1>Probe words</h1><p class="note">{_ABOUT}</p>'
            + (f'<ul class="note">{listed}</ul>' if listed else "") + f"{plots}\n</body></html>\n")


def write_probe_page(runs: pd.DataFrame, out_dir: Path) -> Optional[Path]:
    """``out_dir/plots/probes.html`` for ``runs`` (one row per run, as ``Sweep.runs``: its
    columns name, arch and path are read, in its order); None, writing nothing, where no
    run has probe records."""
    found, notes = _runs_records(runs)
    if not found:
        return None
    plots_dir = Path(out_dir) / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    if not (plots_dir / PLOTLY_JS).exists():  # drawn before, or without, the report's other pages
        write_text(plots_dir / PLOTLY_JS, plotly.offline.get_plotlyjs())
    colour = _group_colours(found)
    figures = [distances(found, colour), *(positions(name, records, colour) for name, records in found.items())]
    path = plots_dir / PAGE
    write_text(path, _page(figures, notes))
    return path
