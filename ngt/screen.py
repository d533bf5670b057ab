"""``python -m ngt.screen``: one run, or with ``-m`` a screening grid (Hydra multirun)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ngt.config import register_configs
from ngt.errors import NGTError, RunFailed, exit_on_user_error, os_error_line
from ngt.naming import override_key, quoted, register_resolvers, sweep_dir_overrides
from ngt.preflight import GRID_SIZE, is_swept, preflight

log = logging.getLogger("ngt.screen")

register_configs()
register_resolvers()


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    from ngt.runner import train  # torch and data imports wait until the config is known to be valid

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun:
        log.info("run %d of %s: %s", hc.job.num + 1, os.environ.get(GRID_SIZE, "?"), run_dir)
    try:
        return train(OmegaConf.to_object(cfg), run_dir, job_num=hc.job.num if multirun else 0,
                     record=hydra_record(cfg, hc))
    except KeyboardInterrupt:
        log.error("stopped at once by Ctrl-C (during set-up, or a second one): %s resumes from its last periodic "
                  "checkpoint", run_dir)
        sys.exit(130)
    except Exception as e:  # recorded in the run's summary by train(); here, the log and the exit status
        message = str(e) if isinstance(e, NGTError) else os_error_line(e) if isinstance(e, OSError) else \
            f"{type(e).__name__}: {e} (traceback in {run_dir / 'traceback.txt'})"
        status = 2 if isinstance(e, NGTError) and not isinstance(e, RunFailed) else 1
    log.error("error: %s", message)
    # Let the other runs of the grid go on; the sweep reports the failure at its end. Not in
    # a data-parallel grid: its processes no longer stand at the same point of it.
    if multirun and int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return {"status": "failed", "message": message}
    sys.exit(status)


def hydra_record(cfg: DictConfig, hc: Any) -> dict[str, str]:
    """What Hydra wrote into the run's ``.hydra/`` for this launch, made again from the
    launch's own config, so the run's holder can have it put back (ngt.rundir.RunDir.lock)."""
    if hc.output_subdir is None:
        return {}
    return {"config.yaml": OmegaConf.to_yaml(cfg), "overrides.yaml": OmegaConf.to_yaml(hc.overrides.task)}


# A data-parallel run's ranks > 0 leave the run directory to rank 0: no .hydra/, no run.log,
# and no log lines but warnings and errors (on their stderr).
QUIET_RANK = ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]


def quiet_rank(rank: int) -> list[str]:
    """The overrides that keep a data-parallel run's rank > 0 out of the run directory: added
    here under torchrun, and by hydra/launcher=slurm_ddp to its Slurm tasks."""
    return QUIET_RANK if rank > 0 else []


def continue_overrides(overrides: list[str], multirun: bool) -> tuple[list[str], bool]:
    """``continue=RUN_DIR [overrides]``: the run's own overrides, then the new ones, in the
    run's own directory, so e.g. ``budget=long50k`` extends a finished screen run in place.
    Returns the overrides to run and whether they continue a run."""
    given = [o for o in overrides if o.startswith("continue=")]
    if not given:
        return overrides, False
    run = Path(given[0].split("=", 1)[1]).expanduser().resolve()
    saved = run / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise NGTError(f"continue={run}: not a run directory (no .hydra/overrides.yaml)")
    new = [o for o in overrides if o not in given]
    # force=true trained the run again once; carried on, it would wipe what continue= extends.
    # A pause (budget.stop_at) was a halving rung's: continuing a run means going past it.
    replaced = {override_key(n) for n in new} | {"force", "budget.stop_at"}
    kept = [o for o in _saved_overrides(saved) if override_key(o) not in replaced]
    if multirun:
        where = [f"hydra.sweep.dir={quoted(run.parent)}", f"hydra.sweep.subdir={quoted(run.name)}"]
    else:
        where = [f"hydra.run.dir={quoted(run)}"]
    return [*kept, *new, *where], True


def _saved_overrides(saved: Path) -> list[str]:
    try:
        loaded = OmegaConf.load(saved)
    except Exception as e:  # YAML's and OmegaConf's parse errors
        raise NGTError(f"{saved} is damaged ({str(e).splitlines()[0][:120]})") from None
    if not OmegaConf.is_list(loaded) or not all(isinstance(o, str) for o in loaded):
        raise NGTError(f"{saved} is damaged (not a list of overrides)")
    return list(loaded)


def command_line(argv: list[str]) -> tuple[list[str], list[str], argparse.Namespace]:
    """Hydra's flags and the overrides, told apart by Hydra's own argument parser (a flag's
    value, as in ``--cfg job``, is not an override)."""
    args = get_args_parser().parse_intermixed_args(argv)
    pending, flags = list(args.overrides), []
    for a in argv:
        if pending and a == pending[0]:
            pending.pop(0)
        else:
            flags.append(a)
    return flags, list(args.overrides), args


def _runs_jobs(args: argparse.Namespace) -> bool:
    """Whether the command trains, rather than printing help, a config or information."""
    return not (args.help or args.hydra_help or args.cfg or args.info or args.shell_completion)


def _without_multirun(flags: list[str], overrides: list[str]) -> list[str]:
    """Hydra shows one config at a time: ``-m`` with ``--cfg`` or ``--info`` shows the grid's
    shared config, or says which swept keys to fix."""
    swept = [o for o in overrides if not o.startswith("hydra") and is_swept(o)]
    if swept:
        raise NGTError(f"--cfg and --info show one job's config: give one value to {', '.join(swept)} "
                       "(or drop them) to see it")
    return [f for f in flags if f not in ("-m", "--multirun")]


def cli() -> None:
    # Hydra would print config errors over several lines with a hint about stack traces;
    # letting them through to here lets us name the problem in one line instead.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    with exit_on_user_error():
        flags, overrides, args = command_line(sys.argv[1:])
        if args.multirun and not _runs_jobs(args):
            flags = _without_multirun(flags, overrides)
            args.multirun = False
        overrides, continuing = continue_overrides(overrides, args.multirun)
        if args.multirun:
            overrides = sweep_dir_overrides(overrides)
        if _runs_jobs(args):
            jobs = preflight(overrides, args.multirun, continuing, args.config_name or "config")
            os.environ[GRID_SIZE] = str(len(jobs))  # inherited by launched jobs, for "run k of n"
        # torchrun's ranks > 0 (Slurm's get theirs in SlurmDataParallel)
        overrides += quiet_rank(int(os.environ.get("RANK", 0)))
        sys.argv[1:] = [*flags, *overrides]  # flags first: Hydra's parser wants them before the overrides
        main()


if __name__ == "__main__":
    cli()
