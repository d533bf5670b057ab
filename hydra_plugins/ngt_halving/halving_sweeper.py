"""``hydra/sweeper=halving``: Hydra's grid, trained by successive halving (ngt.halving).

Each rung launches its jobs through the configured launcher (basic, local or Slurm) with
``budget.stop_at`` set to the rung's step; between rungs the sweeper reads each run's
validation loss at that step from its run directory and keeps the best 1/eta of the
configurations. A sweep killed mid-rung and launched again finds its finished runs
done, resumes the others, and so takes the same decisions.
"""

# No `from __future__ import annotations`: Hydra loads plugin modules without registering
# them in sys.modules, where dataclasses would look postponed annotations up.
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from ngt.halving import Decisions, configuration, rung_steps, seeds_of, select, varying_keys
from ngt.preflight import GRID_SIZE
from ngt.rundir import RunDir

log = logging.getLogger("ngt.halving")


@dataclass
class HalvingSweeperConf:
    _target_: str = "hydra_plugins.ngt_halving.halving_sweeper.HalvingSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None
    eta: int = 3  # each rung keeps the best 1/eta of the configurations
    rungs: int = 3  # budgets max_steps / eta^(rungs-1), ..., max_steps


ConfigStore.instance().store(group="hydra/sweeper", name="halving", node=HalvingSweeperConf, provider="ngt")


class HalvingSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int], eta: int, rungs: int,
                 params: Optional[Dict[str, str]] = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        if eta < 2 or rungs < 1:
            raise ValueError(f"hydra.sweeper.eta={eta} must be at least 2 and hydra.sweeper.rungs={rungs} at least 1")
        self.eta, self.rungs = eta, rungs

    def sweep(self, arguments: List[str]) -> Any:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        (jobs,) = self.split_arguments(parser.parse_overrides([*self._parse_config(), *arguments]), None)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        first = self.hydra_context.config_loader.load_sweep_config(self.config, list(jobs[0]))
        budget = first.budget
        decisions = Decisions(self.eta, rung_steps(budget.max_steps, budget.eval_every, self.eta, self.rungs),
                              steps_full_grid=len(jobs) * budget.max_steps)
        self.varying = varying_keys([list(j) for j in jobs])
        alive = {configuration(j, self.varying) for j in jobs}
        baselines = {configuration(j, self.varying) for j in jobs if self._is_baseline(j)}
        returns, done, job_idx = [], 0, 0
        for step in decisions.steps:
            batch = [list(j) for j in jobs if configuration(j, self.varying) in alive]
            log.info("halving: rung at step %d of %d: %d runs (%d configurations)", step, budget.max_steps,
                     len(batch), len(alive))
            launched = [j + self._stop_at(step, budget.max_steps) for j in batch]
            os.environ[GRID_SIZE] = str(job_idx + len(launched))  # "run k of n": n, the runs launched so far
            for chunk in self.split_overrides_to_chunks(launched, self.max_batch_size):
                self.validate_batch_is_legal(chunk)
                returns.append(self.launcher.launch(chunk, initial_job_idx=job_idx))
                job_idx += len(chunk)
            decisions.steps_trained += len(batch) * (step - done)
            done = step
            rung = select(self._losses(batch, step), baselines, self.eta)
            rung.step = step
            if step == budget.max_steps:
                rung.kept = sorted(alive)
            decisions.rungs.append(rung)
            decisions.write(sweep_dir)
            alive = set(rung.kept)
        log.info("halving: %d of %d steps trained (%.0f%%)", decisions.steps_trained, decisions.steps_full_grid,
                 100 * decisions.steps_trained / max(1, decisions.steps_full_grid))
        return returns

    @staticmethod
    def _stop_at(step: int, max_steps: int) -> list[str]:
        return [f"budget.stop_at={step}"] if step < max_steps else []

    def _is_baseline(self, job: Sequence[str]) -> bool:
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(job))
        return cfg.variant.arch == "baseline"

    def _run_dir(self, job: Sequence[str]) -> Path:
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(job))
        return Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir)

    def _losses(self, batch: list[list[str]], step: int) -> dict[str, dict[str, float]]:
        """Each configuration's validation loss per seed at ``step``, from the run directories
        (inf where a run failed or did not get there)."""
        losses: dict[str, dict[str, float]] = {}
        for job in batch:
            rows = RunDir(self._run_dir(job)).read_metrics()
            loss = next((r["val/loss"] for r in rows if r["step"] == step and r["val/loss"] is not None), math.inf)
            losses.setdefault(configuration(job, self.varying), {})[seeds_of(job)] = loss
        return losses
