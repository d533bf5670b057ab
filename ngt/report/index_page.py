"""index.html's own parts: a title that says what was screened, with what and on what, and
the runs table with each run's status at a glance, its directory and its command."""

from __future__ import annotations

import html
from urllib.parse import quote

import pandas as pd

from ngt.report.analysis import Analysis
from ngt.report.tables import distinct, machine

_STATUS_COLOUR = {"completed": "#1a9850", "failed": "#d73027", "unreadable": "#d73027", "running": "#4575b4",
                  "interrupted": "#f46d43", "paused": "#fdae61", "started": "#7f7f7f"}
STYLE = (".meta{color:#333;margin:.2em 0}.meta b{font-weight:600}code{font-size:12px;overflow-wrap:anywhere}"
         ".status{color:#fff;border-radius:3px;padding:0 5px;font-size:12px;white-space:nowrap}"
         ".verdicts li{font-family:ui-monospace,monospace;font-size:13px}"
         ".runs tr.command td{border-top:none;color:#555;padding-left:2em}")


def _size(res: pd.DataFrame) -> str:
    """'tiny, 0.70 M parameters': each model, with the baseline's count (NGT's matches it within 0.01%)."""
    models = distinct(res, "model")
    params = res.loc[res["label"] == "baseline", "params"].dropna()
    params = params if len(params) else res["params"].dropna()
    return models + (f", {float(params.iloc[0]) / 1e6:.2f} M parameters" if len(params) else "")


def title_block(a: Analysis, title: str) -> str:
    """The sweep's name (its command beneath), then when, where, on what data, how big, which code."""
    res = a.results
    name = distinct(res, "sweep") if res["sweep"].notna().any() else title
    written = res["updated"].replace("", None).dropna()
    date = written.max()[:10] if len(written) else "?"
    facts = [("last run written", date), ("device", machine(res)), ("data", distinct(res, "data")),
             ("model", _size(res)), ("code", distinct(res, "code"))]
    meta = " · ".join(f"{k} <b>{html.escape(v)}</b>" for k, v in facts)
    command = "".join(f"<p class=\"meta\"><code>{html.escape(c)}</code></p>" for c in a.sweep.sweep_commands)
    return f"<h1>Sweep {html.escape(name)}</h1>{command}<p class=\"meta\">{meta}</p>"


def _cell(x: object, fmt: str = "{}") -> str:
    return "" if x is None or x is pd.NA or (isinstance(x, float) and x != x) else html.escape(fmt.format(x))


def runs_table(a: Analysis) -> str:
    """One row per run: status as a coloured badge, no 'None' anywhere, the run directory (a
    link, relative to the page), and beneath it the command that trains that run alone."""
    head = ("<tr><th>run</th><th>status</th><th>step</th><th>val loss (last)</th><th>best (step)</th>"
            "<th>steps/s</th><th>params</th><th>message</th><th>directory</th></tr>")
    rows = []
    for _, r in a.results.iterrows():
        colour = _STATUS_COLOUR.get(r["status"], "#7f7f7f")
        best = f"{_cell(r['val_loss_best'], '{:.4f}')} ({_cell(r['best_step'])})" if pd.notna(r["best_step"]) else ""
        command = f"python -m ngt.screen {r['overrides']}".rstrip()
        rows.append(
            f"<tr><td>{html.escape(r['name'])}</td>"
            f"<td><span class=\"status\" style=\"background:{colour}\">{html.escape(r['status'])}</span></td>"
            f"<td>{_cell(r['final_step'])} / {_cell(r['max_steps'])}</td><td>{_cell(r['val_loss_final'], '{:.4f}')}</td>"
            f"<td>{best}</td><td>{_cell(r['steps_per_s'], '{:.3f}')}</td><td>{_cell(r['params'], '{:,}')}</td>"
            f"<td>{_cell(r['message'])}</td>"
            f"<td><a href=\"{html.escape(quote(r['run']))}/\">{html.escape(r['run'])}</a></td></tr>"
            f"<tr class=\"command\"><td colspan=\"9\"><code>{html.escape(command)}</code></td></tr>")
    return f"<table class=\"runs\">{head}{''.join(rows)}</table>"


def verdict_list(lines: list[str]) -> str:
    return "<ul class=\"verdicts\">" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>"
