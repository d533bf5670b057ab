"""HTML pages that open offline: plotly.js is written once into plots/ and every page
loads it from there (no CDN: clusters and trains have no internet)."""

from __future__ import annotations

import html
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
import plotly.offline

from ngt.errors import NGTError
from ngt.report import headline, index_page, plots, rungs
from ngt.report.probes_page import PLOTLY_JS, write_probe_page
from ngt.report.analysis import Analysis
from ngt.report.coords import ValidationSamples, run_coords
from ngt.report.curves import same_note
from ngt.report.files import write_text

log = logging.getLogger("ngt.report")

_STYLE = ("body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1400px}"
          "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}"
          ".note{color:#555}" + index_page.STYLE)


@dataclass
class Pages:
    index: Path
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be drawn, and why


def _page(title: str, body: str, js: str) -> str:
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<script src="{js}"></script><style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n')


def _figure(fig: go.Figure, div_id: str | None = None) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"responsive": True}, div_id=div_id)


def _write(path: Path, title: str, fig: go.Figure, note: str = "") -> Path:
    body = f'<p><a href="../index.html">index</a></p>{note}{_figure(fig)}'
    return write_text(path, _page(title, body, PLOTLY_JS))


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_")


def _coords_pages(a: Analysis, out: Path, pages: Pages) -> None:
    samples = ValidationSamples()
    for _, r in a.results[a.results["arch"] == "ngt"].iterrows():
        if not isinstance(r["checkpoint"], str):
            pages.notes.append(f"{r['name']}: no checkpoint ({r['status']}), so no coordinate plot")
            continue
        try:
            c = plots.coords(run_coords(r["checkpoint"], samples), r["name"])
        except (NGTError, OSError, RuntimeError) as e:  # unreadable data or a checkpoint this code cannot load
            pages.notes.append(f"{r['name']}: no coordinate plot ({e})")
            continue
        note = ('<p class="note">Marker colour and size: the token\'s mass. Hover: the token, whitespace shown as '
                '␣ ↵ ⇥. Sample: the first tokens of the validation split.</p>')
        pages.plots.append(_write(out / f"coords_{_slug(r['name'])}.html", f"coordinates: {r['name']}", c, note))


def _answer(a: Analysis) -> str:
    """The first screen: the headline picture, the same as lines, and the difference over steps."""
    if a.vs_baseline["missing"].isna().any():
        figure = _figure(headline.headline(a), "headline") + index_page.verdict_list(a.verdict_lines())
        if a.time.caution():
            figure += f'<p class="note">At equal training time: {html.escape(a.time.caution())}.</p>'
        figure += _figure(headline.difference_over_steps(a), "difference")
    else:
        figure = '<p class="note">No variant could be compared with a baseline run (see Summary.md).</p>'
    same = "".join(f"<li>{html.escape(same_note(r))}</li>" for _, r in a.same.iterrows())
    return figure + (f'<p class="note">Identical curves:</p><ul class="note">{same}</ul>' if same else "")


def _index(a: Analysis, out: Path, pages: Pages, title: str, losses: go.Figure | None) -> None:
    links = "".join(f'<li><a href="plots/{p.name}">{html.escape(p.stem)}</a></li>' for p in pages.plots)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in pages.notes)
    counts = ", ".join(f"{n} {s}" for s, n in a.results["status"].value_counts().items())
    body = (index_page.title_block(a, title) + _answer(a) + rungs.html_section(a.sweep.halving)
            + f"<p>{len(a.results)} runs: {counts}. "
            '<a href="Summary.md">Summary.md</a> · <a href="report.md">report.md</a> · '
            f'<a href="results.csv">results.csv</a></p><h2>Plots</h2><ul>{links}</ul>'
            + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "")
            + (_figure(losses) + _figure(plots.losses_zoom(a)) if losses is not None else "")
            + f"<h2>Runs</h2>{index_page.runs_table(a)}")
    write_text(pages.index, _page(title, body, f"plots/{PLOTLY_JS}"))


def write_pages(a: Analysis, out: Path, title: str) -> Pages:
    """index.html in ``out``, the plot pages in ``out/plots``."""
    plot_dir = out / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    for old in plot_dir.glob("*.html"):  # pages of runs renamed or gone since the last report
        old.unlink()
    write_text(plot_dir / PLOTLY_JS, plotly.offline.get_plotlyjs())
    pages = Pages(index=out / "index.html")
    losses = None
    if a.sweep.metrics.empty:
        pages.notes.append("no loss plot: no run has been evaluated yet")
    else:
        losses = plots.losses(a)
        pages.plots.append(_write(plot_dir / "losses.html", "losses", losses))
    if a.window and a.speeds["steps_per_s"].notna().any():
        pages.plots.append(_write(plot_dir / "throughput.html", "throughput", plots.throughput(a)))
    else:
        pages.notes.append("no throughput plot: no step window shared by the compared runs")
    if (a.results["arch"] == "ngt").any() and any(c.startswith("ngt/L") for c in a.sweep.metrics.columns):
        pages.plots.append(_write(plot_dir / "diagnostics.html", "NGT diagnostics", plots.diagnostics(a)))
    _coords_pages(a, plot_dir, pages)
    probes = write_probe_page(a.results, out)
    if probes is not None:
        pages.plots.append(probes)
    _index(a, out, pages, title, losses)
    for note in pages.notes:
        log.info("report: %s", note)
    return pages
