"""Successive halving over a grid: every configuration trains to a first rung, only the
best 1/eta of them go on to the next, and so on to the full budget.

A configuration is a job's overrides without its seeds; its runs over the seeds are
ranked together, by the mean over seeds of the validation loss at the rung's step,
paired with the baseline's runs of the same seeds. The best baseline configuration is
always kept, as the reference every report compares with. Runs stopped at a rung train
on the full budget's schedule (``budget.stop_at``), so a promoted run continues from its
checkpoint exactly as if it had never stopped.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from ngt.atomic import atomic_write_bytes
from ngt.naming import override_key
from ngt.records import finite_or_none

SEED_KEYS = ("seed", "data_seed")  # what makes runs of one configuration replicates of each other
STATE = "halving.json"


def rung_steps(max_steps: int, eval_every: int, eta: int, rungs: int) -> list[int]:
    """max_steps / eta^(rungs-1), ..., max_steps / eta, max_steps, each rounded down to an
    evaluated step (at least the first evaluation), without repeats."""
    steps: list[int] = []
    for r in range(rungs - 1, -1, -1):
        step = max_steps // eta**r
        step = max_steps if step >= max_steps else max(eval_every, step - step % eval_every)
        if not steps or step > steps[-1]:
            steps.append(min(step, max_steps))
    return steps


def configuration(job: list[str], varying: Optional[set[str]] = None) -> str:
    """A job's configuration: its overrides without the seeds (only the ``varying`` keys,
    where given), in a fixed order."""
    keep = [o for o in job if override_key(o) not in SEED_KEYS and (varying is None or override_key(o) in varying)]
    return " ".join(sorted(keep)) or "default"


def varying_keys(jobs: list[list[str]]) -> set[str]:
    """The keys whose values differ between jobs: what tells configurations apart."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for o in job:
            values.setdefault(override_key(o), set()).add(o)
    return {k for k, v in values.items() if len(v) > 1 or sum(override_key(o) == k for j in jobs for o in j) < len(jobs)}


def seeds_of(job: list[str]) -> str:
    return " ".join(sorted(o for o in job if override_key(o) in SEED_KEYS))


@dataclass
class Rung:
    step: int
    scores: dict[str, float]  # configuration -> mean over seeds of (its loss - the reference's) at ``step``
    kept: list[str]  # configurations that go on to the next rung
    reference: Optional[str]  # the baseline configuration the scores are paired with


@dataclass
class Decisions:
    """What the sweep did, written beside its runs (halving.json) and shown by the report."""

    eta: int
    steps: list[int]
    rungs: list[Rung] = field(default_factory=list)
    steps_trained: int = 0  # optimizer steps summed over runs, seeds included
    steps_full_grid: int = 0  # the same for every configuration trained to the full budget

    def write(self, sweep_dir: Path) -> None:
        record = asdict(self)
        for rung in record["rungs"]:  # JSON has no infinity: a run that failed or never got there
            rung["scores"] = {c: finite_or_none(v) for c, v in rung["scores"].items()}
        text = json.dumps(record, indent=2) + "\n"
        atomic_write_bytes(sweep_dir / STATE, lambda f: f.write(text.encode()))


def select(losses: dict[str, dict[str, float]], baselines: set[str], eta: int) -> Rung:
    """From each configuration's loss per seed at a rung, the configurations that go on:
    the best baseline, and the best ceil(n/eta) of the others by their mean loss paired
    with that baseline's (a configuration missing a seed's loss ranks last)."""
    mean = {c: _mean(v.values()) for c, v in losses.items()}
    reference = min(baselines & set(losses), key=lambda c: mean[c], default=None)
    ref = losses.get(reference, {})
    scores = {c: _mean(v.get(s, math.inf) - ref.get(s, 0.0) for s in (ref or v)) for c, v in losses.items()}
    others = sorted((c for c in losses if c not in baselines), key=lambda c: (scores[c], c))
    kept = ([reference] if reference else []) + others[:math.ceil(len(others) / eta)]
    return Rung(step=0, scores=scores, kept=kept, reference=reference)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values and all(math.isfinite(v) for v in values) else math.inf
