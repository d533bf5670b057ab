"""``python -m ngt.screen``: one run, or with ``-m`` a screening grid (Hydra multirun)."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ngt.config import register_configs
from ngt.errors import NGTError, exit_on_user_error
from ngt.naming import register_resolvers, sweep_name
from ngt.rundir import RunDir

log = logging.getLogger("ngt.screen")

register_configs()
register_resolvers()


def _record_failure(run_dir: Path, message: str) -> None:
    rd = RunDir(run_dir)
    summary = rd.read_summary() or {}
    if summary.get("status") != "failed":
        rd.write_summary({**summary, "status": "failed", "message": message})


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    from ngt.train import train  # torch and data imports wait until the config is known to be valid

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        return train(OmegaConf.to_object(cfg), run_dir, job_num=hc.job.num if multirun else 0)
    except NGTError as e:
        message = str(e)
    except Exception as e:  # a bug, not bad input: keep the traceback in the run directory
        (run_dir / "traceback.txt").write_text(traceback.format_exc())
        message = f"{type(e).__name__}: {e} (traceback in {run_dir / 'traceback.txt'})"
    _record_failure(run_dir, message)
    log.error("error: %s", message)
    if multirun:  # let the other runs of the grid go on; the sweep reports the failure at its end
        return {"status": "failed", "message": message}
    sys.exit(2)


def _quoted(value: object) -> str:
    """A value for a Hydra override, taken literally: run names hold '=' and ','."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def continue_argv(argv: list[str]) -> list[str]:
    """``continue=RUN_DIR [overrides]``: the run's own overrides, then the new ones, in the
    run's own directory, so e.g. ``budget=long50k`` extends a finished screen run in place."""
    given = [a for a in argv if a.startswith("continue=")]
    if not given:
        return argv
    run = Path(given[0].split("=", 1)[1]).expanduser().resolve()
    saved = run / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise NGTError(f"continue={run}: not a run directory (no .hydra/overrides.yaml)")
    flags = [a for a in argv if a.startswith("-")]
    new = [a for a in argv if not a.startswith("-") and a not in given]
    kept = [o for o in OmegaConf.load(saved) if _key(o) not in {_key(n) for n in new}]
    if {"-m", "--multirun"} & set(flags):
        where = [f"hydra.sweep.dir={_quoted(run.parent)}", f"hydra.sweep.subdir={_quoted(run.name)}"]
    else:
        where = [f"hydra.run.dir={_quoted(run)}"]
    return [*flags, *kept, *new, *where]


def sweep_dir_argv(argv: list[str]) -> list[str]:
    """With ``-m``, pin where the grid goes from the command line as typed: the sweep dir
    named by every override, each run's subdir by the swept ones only.

    Hydra resolves both again inside every job, where the task overrides are that job's
    own (``variant=baseline`` rather than the grid), so the sweep dir must be a plain value
    fixed here once; it then travels with each job, to submitit's processes too."""
    if not {"-m", "--multirun"} & set(argv):
        return argv
    given = {_key(a) for a in argv if not a.startswith("-")}
    overrides = [a for a in argv if not a.startswith("-")]
    added = []
    if "hydra.sweep.dir" not in given:
        added.append(f"hydra.sweep.dir={_quoted('outputs/sweeps/' + sweep_name(overrides))}")
    if "hydra.sweep.subdir" not in given:
        parsed = OverridesParser.create().parse_overrides([o for o in overrides if not o.startswith("hydra")])
        fixed = sorted({o.key_or_group.replace("/", "_") for o in parsed if not o.is_sweep_override()} - {"sweep"})
        if fixed:
            added.append("hydra.sweep.subdir='${ngt.dirname:${hydra.overrides.task},sweep," + ",".join(fixed) + "}'")
    return [*argv, *added]


def cli() -> None:
    # Hydra would print config errors over several lines with a hint about stack traces;
    # letting them through to here lets us name the problem in one line instead.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    with exit_on_user_error():
        sys.argv[1:] = sweep_dir_argv(continue_argv(sys.argv[1:]))
        main()


if __name__ == "__main__":
    cli()
