"""write_report: the report stage's entry point (see ngt/report/__init__.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd

from ngt.report import report_md, summary_md, tables
from ngt.report.analysis import Analysis, analyse
from ngt.report.load import load_runs
from ngt.report.pages import Pages, write_pages

log = logging.getLogger("ngt.report")


@dataclass(frozen=True)
class Report:
    out: Path
    analysis: Analysis
    pages: Pages

    @property
    def runs(self) -> pd.DataFrame:
        return self.analysis.results


def write_report(dirs: Iterable[Path], out: Path, window: Optional[list[int]] = None) -> Report:
    dirs = [Path(d) for d in dirs]
    out = Path(out)
    sweep = load_runs(dirs, out)  # first: a mistyped directory must fail, not be created as ``out``
    out.mkdir(parents=True, exist_ok=True)
    a = analyse(sweep, window)
    title = dirs[0].resolve().name if len(dirs) == 1 else f"{len(dirs)} directories"
    a.results[tables.csv_columns(sweep)].to_csv(out / "results.csv", index=False)
    (out / "Summary.md").write_text(summary_md.render(a, title), encoding="utf-8")
    (out / "report.md").write_text(report_md.render(a, title), encoding="utf-8")
    pages = write_pages(a, out, title)
    return Report(out, a, pages)


__all__ = ["write_report", "Report"]
