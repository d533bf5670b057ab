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

from ngt.errors import NGTError, needs_packages

log = logging.getLogger("ngt.report")
TRACEBACK = "report-traceback.txt"


def _print_answer(report) -> None:
    """Each variant against the baseline, as Summary.md's answer says it, on the console where
    the grid ran."""
    for at_time in (False, True):
        for line in report.analysis.verdict_lines(at_time=at_time):
            log.info("%s%s", "at equal training time: " if at_time else "", line)


class ReportCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if int(os.environ.get("RANK", 0)) > 0:  # a grid of data-parallel runs under torchrun: rank 0 reports
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            with needs_packages("the report"):  # pandas, plotly, scipy: a bundle may lack one
                from ngt.report import write_report
            report = write_report([sweep_dir], sweep_dir)
        except Exception as e:  # the runs are done and saved: one line on how to get their report instead
            why = str(e) if isinstance(e, NGTError) else f"{type(e).__name__}: {e}"
            if not isinstance(e, NGTError):  # a bug: its traceback goes beside the runs, not over the log
                (sweep_dir / TRACEBACK).write_text(traceback.format_exc())
                why += f" (traceback in {sweep_dir / TRACEBACK})"
            log.error("the report could not be written: %s; once fixed: python -m ngt.report %s", why, sweep_dir)
            sys.exit(1)
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
