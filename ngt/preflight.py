"""Every job of a command, composed and checked before Hydra creates a directory or
submits a job.

A value out of range, a choice that does not exist, or a command that does not fit the
run directory it would train in (a finished run with another config, ``continue=`` to a
shorter budget) fails here with one line, so a Slurm grid with a typo in its fifth job
submits nothing, and a refused command leaves every file of every run as it was.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from ngt.config import CONF, NEUTRAL_KEYS, Config, check_known, differences, plain
from ngt.errors import NGTError
from ngt.records import RunSummary, Status
from ngt.rundir import RunDir


# The number of runs a command launches, for each run's "run k of n" line (jobs inherit it).
GRID_SIZE = "NGT_GRID_SIZE"


@dataclass(frozen=True)
class Job:
    overrides: list[str]
    config: Config
    run_dir: Optional[Path]  # None where the directory depends on what only Hydra's launch knows


def job_overrides(base: DictConfig, overrides: list[str], multirun: bool) -> list[list[str]]:
    """Each job's overrides, as Hydra's grid sweeper expands the sweeper's params and the
    command line (the command line wins for a key in both)."""
    if not multirun:
        return [overrides]
    params = OmegaConf.to_container(base.hydra.sweeper.get("params") or {}, resolve=True)
    given = [f"{k}={v}" for k, v in params.items()] + [o for o in overrides if not o.startswith("hydra")]
    parsed = OverridesParser.create().parse_overrides(given)
    (jobs,) = BasicSweeper.split_arguments(parsed, None)
    return [list(job) for job in jobs]


def _run_dir(cfg: DictConfig, multirun: bool) -> Optional[Path]:
    try:
        if multirun:
            return Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir)
        return Path(cfg.hydra.run.dir)
    except OmegaConfBaseException:  # e.g. a subdir named by ${hydra.job.num}
        return None


def _processes(node: DictConfig) -> tuple[int, str]:
    """How many processes will train each job, and who says so: the slurm_ddp launcher's
    tasks, else torchrun's WORLD_SIZE (one process without either)."""
    launcher = node.hydra.get("launcher") or {}
    if str(launcher.get("_target_", "")).startswith("hydra_plugins.ngt_slurm_ddp."):
        tasks, nodes = int(launcher.get("tasks_per_node") or 1), int(launcher.get("nodes") or 1)
        return tasks * nodes, f"hydra.launcher.tasks_per_node={tasks} x nodes={nodes}"
    size = int(os.environ.get("WORLD_SIZE", 1))
    return size, f"WORLD_SIZE={size}"


def _as_config(node: DictConfig) -> Config:
    """The job's config as ``ngt.screen`` will get it: Hydra's own settings removed, then
    made into the typed objects (which checks every range)."""
    with open_dict(node):
        del node["hydra"]
    check_known(node)
    return OmegaConf.to_object(node)


def plan(overrides: list[str], multirun: bool, config_name: str = "config") -> list[Job]:
    """Every job the command would run, with its validated config and its run directory.
    Hydra's launch settings (``hydra.*``) apply to every job, as on the command line."""
    launch = [o for o in overrides if o.startswith("hydra")]
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        base = compose(config_name, overrides=[o for o in overrides if not is_swept(o)], return_hydra_config=True)
        jobs = []
        for job in job_overrides(base, overrides, multirun):
            node = compose(config_name, overrides=[*job, *launch], return_hydra_config=True)
            run_dir, processes = _run_dir(node, multirun), _processes(node)
            config = _as_config(node)
            config.train.check_split(*processes)
            jobs.append(Job(job, config, run_dir))
    return jobs


def is_swept(override: str) -> bool:
    """Whether an override sweeps values (``seed=1,2``), as only a grid (``-m``) can."""
    return not override.startswith("hydra") and OverridesParser.create().parse_override(override).is_sweep_override()


def check_run_dir(job: Job, continuing: bool) -> None:
    """Refuse a job whose run directory holds a run of another config (the neutral keys
    aside; with ``continue=`` also the budget, which may grow but not shrink), damaged
    records, or (``continue=``) a checkpoint it could not go on from: all before Hydra
    writes there. A plain relaunch's checkpoint is checked once, under the lock: Hydra
    then rewrites .hydra/ with the run's own command."""
    if job.run_dir is None:
        return
    _check_writable(job.run_dir)
    if job.config.force:
        return
    rd = RunDir(job.run_dir)
    rows = rd.read_metrics()  # a garbled row is a one-line NGTError, before anything is written there
    summary = rd.read_summary()  # so is a damaged summary
    if summary is None:
        return  # nothing trained there yet
    if summary.done_under(job.config.budget):
        _check_rows_reach(rd, summary, rows)  # a skip would keep them lost
    elif continuing:  # a refusal under the lock would come after Hydra wrote the new command into .hydra/
        rd.checkpoint_to_go_on(summary)  # missing, damaged or unsafe: refused now
    allowed = (*NEUTRAL_KEYS, "budget") if continuing else NEUTRAL_KEYS
    changed = differences(rd.recorded_config(summary), plain(job.config), allowed)
    if changed:
        what = "a finished run" if summary.status == Status.completed else "a run"
        raise NGTError(f"{job.run_dir} holds {what} of another config ({'; '.join(changed[:3])}); "
                       "use another output directory (hydra.run.dir=...) or the run's own command")
    if continuing and job.config.budget.max_steps < summary.final_step:
        raise NGTError(f"budget.max_steps={job.config.budget.max_steps} is below step {summary.final_step}, "
                       f"where {job.run_dir} stands")


# What a launch writes in a run directory that exists: Hydra's record and log first, then
# the trainer's files (TensorBoard's writer fails in a thread of its own, with a traceback).
WRITTEN = (".hydra", "run.log", "checkpoints", "tb", "metrics.jsonl", "probes.jsonl", "summary.json")


def _check_writable(run_dir: Path) -> None:
    """A directory or file the launch cannot write (read-only, immutable, another owner's)
    would end in a traceback from Hydra or TensorBoard: refused here in one line instead."""
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    for path in [existing, *(existing / name for name in WRITTEN if existing == run_dir)]:
        if path.exists() and not os.access(path, os.W_OK):
            read_only = os.statvfs(path).f_flag & os.ST_RDONLY
            raise NGTError(f"{'Read-only file system' if read_only else 'Permission denied'}: {path}")


def _check_rows_reach(rd: RunDir, summary: RunSummary, rows: list[dict]) -> None:
    """A completed run evaluated its last step: rows that end before it were cut by hand or
    by damage, not by a crash (the summary is written after the row), and a skip would let
    the report give an earlier step's numbers as the run's."""
    last = rows[-1]["step"] if rows else None
    if summary.status == Status.completed and last != summary.final_step:
        raise NGTError(f"{rd.metrics} ends at step {last} but {rd.summary.name} says the run completed at step "
                       f"{summary.final_step}: its last rows are lost; force=true trains the run again")


def check_grammar(overrides: list[str]) -> None:
    """Hydra's parse errors do not say which override they are about ("mismatched input
    '='"): each override is parsed alone, and the one that fails is named."""
    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_override(o)
        except HydraException as e:
            value = o.partition("=")[2]
            hint = "; a value holding '=', ',' or spaces needs quotes: key='...'" \
                if any(c in value for c in "=, ") and value[:1] not in "'\"" else ""
            raise NGTError(f"cannot read the override {o!r}: {str(e).strip().splitlines()[-1]}{hint}") from None


def preflight(overrides: list[str], multirun: bool, continuing: bool = False,
              config_name: str = "config") -> list[Job]:
    check_grammar(overrides)
    jobs = plan(overrides, multirun, config_name)
    for job in jobs:
        check_run_dir(job, continuing)
    return jobs
