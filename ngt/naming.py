"""Run and sweep directory names derived from the overrides, never from the clock.

The same command always maps to the same directories, so a re-launched sweep finds
its runs (completed ones are skipped, interrupted ones resume), and two different
commands never share a run directory.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

from omegaconf import OmegaConf

_MAX = 120
# Overrides that say where or how a run executes, not what it computes.
_NEUTRAL = ("hydra.", "hydra/", "train.device", "train.threads", "train.log_every")


def _clean(override: str) -> str:
    return override.lstrip("+~").replace("/", "_").replace(" ", "")


def _keep(override: str) -> bool:
    return not override.lstrip("+~").startswith(_NEUTRAL)


def dirname(overrides: Iterable[str], drop: Iterable[str] = ()) -> str:
    """'a=1,b=2' from the overrides, sorted; 'default' when there are none."""
    dropped = tuple(f"{k}=" for k in drop)
    parts = sorted(_clean(o) for o in overrides if _keep(o) and not _clean(o).startswith(dropped))
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


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("ngt.dirname"):
        OmegaConf.register_new_resolver("ngt.dirname", lambda ov, *drop: dirname(ov, drop))
