"""Run and sweep directory names derived from the overrides, never from the clock.

The same command always maps to the same directories, so a re-launched sweep finds
its runs (completed ones are skipped, interrupted ones resume), and two different
commands never share a run directory.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from ngt.config import is_neutral, settings_help, variant_names

_MAX = 120


def _clean(override: str) -> str:
    return override.lstrip("+~").replace("/", "_").replace(" ", "")


def dirname(overrides: Iterable[str], drop: Iterable[str] = ()) -> str:
    """'a=1,b=2' from the overrides, sorted; 'default' when there are none."""
    dropped = tuple(f"{k}=" for k in drop)
    parts = sorted(_clean(o) for o in overrides if not is_neutral(override_key(o)) and not _clean(o).startswith(dropped))
    name = ",".join(parts) or "default"
    if len(name) > _MAX:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:_MAX - 11]}~{digest}"
    return name


def sweep_name(overrides: Iterable[str]) -> str:
    """A named grid lives in outputs/sweeps/<name>; extra overrides are appended."""
    overrides = list(overrides)
    named = [o.split("=", 1)[1] for o in overrides if o.startswith("sweep=")]
    rest = dirname(overrides, drop=("sweep",))
    if named:
        return named[0] if rest == "default" else f"{named[0]}+{rest}"
    return rest


def quoted(value: object) -> str:
    """A value for a Hydra override, taken literally: run names hold '=' and ','."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def sweep_dir_overrides(overrides: list[str]) -> list[str]:
    """For a grid (``-m``), pin where it goes from the command line as typed: the sweep dir
    named by every override, each run's subdir by the swept ones only.

    Hydra resolves both again inside every job, where the task overrides are that job's
    own (``variant=baseline`` rather than the grid), so the sweep dir must be a plain value
    fixed here once; it then travels with each job, to submitit's processes too."""
    given = {override_key(o) for o in overrides}
    added = []
    if "hydra.sweep.dir" not in given:
        added.append(f"hydra.sweep.dir={quoted('outputs/sweeps/' + sweep_name(overrides))}")
    if "hydra.sweep.subdir" not in given:
        parsed = OverridesParser.create().parse_overrides([o for o in overrides if not o.startswith("hydra")])
        swept = {o.key_or_group: o.is_sweep_override() for o in parsed}  # the last override of a key wins
        fixed = sorted({k.replace("/", "_") for k, is_swept in swept.items() if not is_swept} - {"sweep"})
        if fixed:
            added.append("hydra.sweep.subdir='${ngt.dirname:${hydra.overrides.task},sweep," + ",".join(fixed) + "}'")
    return [*overrides, *added]


def _settings_help(*, _root_: Any) -> str:
    task = {k: OmegaConf.to_container(_root_[k], resolve=True) if OmegaConf.is_config(_root_[k]) else _root_[k]
            for k in _root_ if k != "hydra"}
    return settings_help(task).replace("$", "$$")  # Hydra fills the help text in with string.Template


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("ngt.dirname"):
        OmegaConf.register_new_resolver("ngt.dirname", lambda ov, *drop: dirname(ov, drop))
    if not OmegaConf.has_resolver("ngt.settings_help"):  # --help: every setting, described
        OmegaConf.register_new_resolver("ngt.settings_help", _settings_help)
    if not OmegaConf.has_resolver("ngt.variants"):  # the default grid: every file in conf/variant/
        OmegaConf.register_new_resolver("ngt.variants", lambda: ",".join(variant_names()))
