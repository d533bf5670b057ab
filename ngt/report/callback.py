"""Write the report when ``python -m ngt.screen -m`` ends, failed runs included.

Hydra calls ``on_multirun_end`` only if no job raised; ``ngt.screen`` records a failed
run in its summary.json and returns instead of raising, so the callback always gets
here. It writes the report first and only then fails the command, so the exit status
still says that some runs failed. (With a launcher whose jobs can die without returning,
e.g. a killed Slurm job, ``python -m ngt.report DIR`` writes the same report by hand.)
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ngt.errors import NGTError, needs_packages, os_error_line
from ngt.report.files import TRACEBACK

log = logging.getLogger("ngt.report")


def _print_answer(report) -> None:
    """Each variant against the baseline, as Summary.md's answer says it, on the console where
    the grid ran."""
    for at_time in (False, True):
        for line in report.analysis.verdict_lines(at_time=at_time):
            log.info("%s%s", "at equal training time: " if at_time else "", line)


def _keep_traceback(sweep_dir: Path) -> str:
    """A bug's traceback, beside the runs rather than over the log; where it went, or why
    not (the disk that failed the report may fail this write too)."""
    path = sweep_dir / TRACEBACK
    try:
        path.write_text(traceback.format_exc(), encoding="utf-8")
    except OSError as e:
        return f" (its traceback could not be saved: {os_error_line(e)})"
    return f" (traceback in {path})"


def _report(sweep_dir: Path):
    """The report written, or the command ended with one line and exit status 1: Hydra would
    turn an exception escaping a callback into a warning and exit 0."""
    try:
        with needs_packages("the report"):  # pandas, plotly, scipy: a bundle may lack one
            from ngt.report import write_report
        return write_report([sweep_dir], sweep_dir)
    except NGTError as e:
        why = str(e)
    except OSError as e:  # a full or read-only disk: no traceback file to write there
        why = os_error_line(e)
    except Exception as e:  # a bug; the runs are done and saved
        why = f"{type(e).__name__}: {e}" + _keep_traceback(sweep_dir)
    log.error("the report could not be written: %s; once fixed: python -m ngt.report %s", why, sweep_dir)
    sys.exit(1)


class ReportCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if int(os.environ.get("RANK", 0)) > 0:  # a grid of data-parallel runs under torchrun: rank 0 reports
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        report = _report(sweep_dir)
        runs = report.runs
        _print_answer(report)
        log.info("report: %s (Summary.md, report.md, results.csv beside it)", report.pages.index)
        unfinished = runs[~runs["status"].isin(["completed", "failed", "paused"])]  # paused: a halving rung
        for _, r in unfinished.iterrows():
            log.warning("run %s is %s at step %s: %s", r["name"], r["status"], r["final_step"], r["path"])
        failed = runs[runs["status"] == "failed"]
        if len(failed):
            for _, r in failed.iterrows():
                log.error("run %s failed: %s (%s)", r["name"], r["message"], r["path"])
            log.error("%d of %d runs failed; the report covers all of them", len(failed), len(runs))
            sys.exit(1)
