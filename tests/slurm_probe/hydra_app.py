"""Scratch probe: trivial Hydra app whose 'training' resumes from its own output dir."""
import json
import os
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from recipe import Preemption  # sibling module: the job must be able to import it


@hydra.main(version_base=None, config_path="hydra_conf", config_name="config")
def main(cfg: DictConfig) -> float:
    out = Path(HydraConfig.get().runtime.output_dir)
    ckpt = out / "ckpt.json"
    step = json.loads(ckpt.read_text())["step"] if ckpt.exists() else 0
    log = lambda m: open(out / "events.log", "a").write(
        f"{time.time():.2f} job={os.environ.get('SLURM_JOB_ID')} restart={os.environ.get('SLURM_RESTART_COUNT', '-')} "
        f"hydra.job.id={HydraConfig.get().job.id} cwd={os.getcwd()} {m}\n")
    log(f"start step={step} out={out}")

    log(f"SLURM_ARRAY_JOB_ID={os.environ.get('SLURM_ARRAY_JOB_ID')} SLURM_ARRAY_TASK_ID={os.environ.get('SLURM_ARRAY_TASK_ID')}")

    def save():
        ckpt.with_suffix(".tmp").write_text(json.dumps({"step": step}))
        os.replace(ckpt.with_suffix(".tmp"), ckpt)
        log(f"saved step={step}")

    with Preemption() as pre:
        while step < cfg.steps:
            time.sleep(cfg.step_s)
            step += 1
            if pre.caught:
                log(f"caught {sorted(pre.caught)}")
            pre.check(save)
    save()
    log("done")
    return cfg.lr * step


if __name__ == "__main__":
    main()
