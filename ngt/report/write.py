"""write_report: the report stage's entry point (see ngt/report/__init__.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd

from ngt.atomic import naming_the_file
from ngt.report import report_md, summary_md, tables
from ngt.report.analysis import Analysis, analyse
from ngt.report.files import TRACEBACK, write_text
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
    with naming_the_file(out / "results.csv"):
        a.results[tables.csv_columns(sweep)].to_csv(out / "results.csv", index=False)
    write_text(out / "Summary.md", summary_md.render(a, title))
    write_text(out / "report.md", report_md.render(a, title))
    pages = write_pages(a, out, title)
    (out / TRACEBACK).unlink(missing_ok=True)  # an earlier report's failure, now stale
    return Report(out, a, pages)


__all__ = ["write_report", "Report"]
