"""``train(cfg, run_dir)``: one run directory brought to its budget. It takes the directory's
lock, skips a run that is already done, resumes one that was stopped, starts one that is
new, and records in the summary how a run that could not go on ended."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any, Optional

from ngt.checkpoint import load_checkpoint
from ngt.config import NEUTRAL_KEYS, Config, differences, plain
from ngt.errors import NGTError, os_error_line
from ngt.provenance import CodeVersion, code_version
from ngt.records import RunSummary, Status
from ngt.rundir import RunBusy, RunDir
from ngt.trainer import RESUMABLE_KEYS, Trainer

log = logging.getLogger("ngt.train")


def train(cfg: Config, run_dir: Path, job_num: int = 0) -> dict[str, Any]:
    """Run (or continue) the run in ``run_dir``; returns its summary as a dict. A run that
    another process is training is skipped. A failure is recorded in the summary (while
    the lock is held, so no other launch sees it half-written), then raised."""
    rd = RunDir(Path(run_dir))
    try:
        with rd.lock():
            try:
                return _train_locked(cfg, rd, job_num)
            except KeyboardInterrupt:  # Ctrl-C twice: stopped before the step's end, nothing saved
                _record(rd, cfg, Status.interrupted, "stopped at once by a second Ctrl-C; "
                                                     "resumes from its last periodic checkpoint")
                raise
            except Exception as e:
                _record(rd, cfg, Status.failed, failure_message(e, rd))
                raise
    except RunBusy as e:
        log.info("%s (skipped)", e)
        return {"status": "skipped", "message": str(e)}


def failure_message(e: Exception, rd: RunDir) -> str:
    """One line for the summary and the log; a bug's traceback goes beside it, in the run."""
    if isinstance(e, NGTError):
        return str(e)
    if isinstance(e, OSError):
        return os_error_line(e)
    where: Optional[Path] = rd.path / "traceback.txt"
    try:
        where.write_text(traceback.format_exc())
    except OSError:
        where = None
    return f"{type(e).__name__}: {e}" + (f" (traceback in {where})" if where else "")


def _record(rd: RunDir, cfg: Config, status: Status, message: str) -> None:
    """Mark the run ``status`` in its summary (made from the config if the trainer wrote
    none yet). A run another launch completed or paused is never marked by this one."""
    try:
        summary = rd.read_summary() or RunSummary.of_config(cfg, status)
        if summary.status in (Status.completed, Status.paused) and summary.final_step > 0:
            return
        summary.status, summary.message = status, message
        rd.write_summary(summary)
    except (NGTError, OSError):
        pass  # a damaged summary stays for the user to see; a failed disk still gets the log line


def _train_locked(cfg: Config, rd: RunDir, job_num: int) -> dict[str, Any]:
    rd.remove_leftovers()
    if cfg.force:
        log.info("force=true: %s starts over", rd.path)
        rd.clear()
    prior = rd.read_summary()
    if prior is not None and _done(prior, cfg):
        changed = differences(prior.config, plain(cfg), NEUTRAL_KEYS) if prior.config else []
        if changed:
            raise NGTError(f"{rd.path} holds a finished run of another config ({'; '.join(changed[:3])})")
        log.info("run already %s at step %d: %s (skipped)", prior.status, prior.final_step, rd.path)
        _warn_if_other_code(prior, rd)
        return {**prior.to_dict(), "skipped": True}
    if not rd.last.exists():
        if prior is not None and prior.final_step > 0:
            raise NGTError(f"{rd.path} stands at step {prior.final_step} but has no {rd.last.name} to go on "
                           "from; force=true trains it again from the start")
        return Trainer(cfg, rd, job_num).run(None).to_dict()
    ckpt = load_checkpoint(rd.last)
    changed = differences(ckpt.config, plain(cfg), RESUMABLE_KEYS)
    if changed:
        raise NGTError(f"{rd.path} holds a run with a different config ({'; '.join(changed[:3])}); "
                       "use another output directory to start a new run")
    return Trainer(cfg, rd, job_num).run(ckpt).to_dict()


def _done(prior: RunSummary, cfg: Config) -> bool:
    """Whether this launch has nothing to train: the run completed its budget, or paused at
    or past where this launch would pause it (a rung of a halving sweep launched again)."""
    b = cfg.budget
    if prior.status == Status.completed:
        return prior.final_step == b.max_steps
    return prior.status == Status.paused and b.stop_at is not None and prior.final_step >= min(b.stop_at, b.max_steps)


def _warn_if_other_code(prior: RunSummary, rd: RunDir) -> None:
    here = code_version()
    made = CodeVersion.from_dict(prior.code) if prior.code else None
    if made is None or (made.ngt, made.git_commit, made.git_dirty) != (here.ngt, here.git_commit, here.git_dirty):
        log.warning("%s was made by %s, not by this code (%s): its numbers stand for that code; "
                    "force=true trains it again", rd.path, made.short() if made else "an older ngt", here.short())
