"""``train(cfg, run_dir)``: one run directory brought to its budget. It takes the directory's
lock, skips a run that is already done, resumes one that was stopped, starts one that is
new, and records in the summary how a run that could not go on ended.

In a data-parallel run (``ngt.runtime.Processes``) rank 0 does all of that; the other
processes join it, take its decision and its checkpoint from it, and write nothing."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any, Optional

from ngt.config import NEUTRAL_KEYS, Config, differences, plain
from ngt.errors import NGTError, os_error_line
from ngt.provenance import CodeVersion, code_version
from ngt.records import Checkpoint, RunSummary, Status
from ngt.rundir import RunBusy, RunDir
from ngt.runtime import Processes, pick_device
from ngt.trainer import RESUMABLE_KEYS, Trainer

log = logging.getLogger("ngt.train")


def train(cfg: Config, run_dir: Path, job_num: int = 0, record: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Run (or continue) the run in ``run_dir``; returns its summary as a dict. A run that
    another process is training is skipped. A failure is recorded in the summary (while
    the lock is held, so no other launch sees it half-written), then raised. ``record``:
    this launch's ``.hydra/`` files (ngt.screen), put back by a launch that finds it busy."""
    rd, procs = RunDir(Path(run_dir)), Processes.from_env()
    procs.check_split(cfg.train)
    procs.join(pick_device(cfg.train.device, job_num, procs=procs), cfg.train.collective_timeout_s)
    result = _lead(cfg, rd, job_num, procs, record or {}) if procs.writes else _follow(cfg, rd, job_num, procs)
    # Every process returns once rank 0 has written the run's end: what comes next (a
    # grid's next run, a halving rung's decision) reads it.
    procs.barrier()
    return result


def _lead(cfg: Config, rd: RunDir, job_num: int, procs: Processes, record: dict[str, str]) -> dict[str, Any]:
    """Rank 0, or the only process: holds the lock, decides, trains, records a failure."""
    try:
        with rd.lock(plain(cfg), record):
            try:
                return _train_locked(cfg, rd, job_num, procs)
            except KeyboardInterrupt:  # Ctrl-C twice: stopped before the step's end, nothing saved
                _record(rd, cfg, Status.interrupted, "stopped at once by Ctrl-C (during set-up, or a second one); "
                                                     "resumes from its last periodic checkpoint")
                raise
            except Exception as e:
                _record(rd, cfg, Status.failed, failure_message(e, rd))
                raise
    except RunBusy as e:
        rd.put_back_record(e.record)  # Hydra wrote this launch's over the holder's
        changed = differences(e.config, plain(cfg), NEUTRAL_KEYS) if e.config is not None else []
        if changed:  # this command's run would never be trained: not a skip
            raise NGTError(f"{e}, with another config ({'; '.join(changed[:3])}); "
                           "run this command again once it has finished") from None
        log.info("%s (skipped)", e)
        return _decided(procs, {"status": "skipped", "message": str(e)})


def _decided(procs: Processes, skipped: Optional[dict[str, Any]], ckpt: Optional[Checkpoint] = None) -> Any:
    """Rank 0's decision, told to the other processes: ``skipped`` (what train() returns
    for a run with nothing to train), or train from ``ckpt`` (None: from scratch)."""
    return procs.shared((skipped, ckpt))[0]


def _follow(cfg: Config, rd: RunDir, job_num: int, procs: Processes) -> dict[str, Any]:
    """Ranks > 0: train as rank 0 decided, from the checkpoint it read (the run directory
    may be on rank 0's node only)."""
    skipped, ckpt = procs.shared(None)
    if skipped is not None:
        return skipped
    return Trainer(cfg, rd, job_num, procs).run(ckpt).to_dict()


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


def _train_locked(cfg: Config, rd: RunDir, job_num: int, procs: Processes) -> dict[str, Any]:
    rd.remove_leftovers()
    if cfg.force:
        log.info("force=true: %s starts over", rd.path)
        rd.clear()
    prior = rd.read_summary()
    if prior is not None and prior.done_under(cfg.budget):
        changed = differences(rd.recorded_config(prior), plain(cfg), NEUTRAL_KEYS)
        if changed:
            raise NGTError(f"{rd.path} holds a finished run of another config ({'; '.join(changed[:3])})")
        log.info("run already %s at step %d: %s (skipped)", prior.status, prior.final_step, rd.path)
        _warn_if_other_code(prior, rd)
        return _decided(procs, {**prior.to_dict(), "skipped": True})
    ckpt = rd.checkpoint_to_go_on(prior)
    if ckpt is not None:
        changed = differences(ckpt.config, plain(cfg), RESUMABLE_KEYS)
        if changed:
            raise NGTError(f"{rd.path} holds a run with a different config ({'; '.join(changed[:3])}); "
                           "use another output directory to start a new run")
    _decided(procs, None, ckpt)
    return Trainer(cfg, rd, job_num, procs).run(ckpt).to_dict()


def _warn_if_other_code(prior: RunSummary, rd: RunDir) -> None:
    here = code_version()
    made = CodeVersion.from_dict(prior.code) if prior.code else None
    if made is None or (made.ngt, made.git_commit, made.git_dirty) != (here.ngt, here.git_commit, here.git_dirty):
        log.warning("%s was made by %s, not by this code (%s): its numbers stand for that code; "
                    "force=true trains it again", rd.path, made.short() if made else "an older ngt", here.short())
