"""Issue 16, part 3: the same run's first steps on CPU and on CUDA, fp32, eager, TF32 off,
dropout off, for every variant; the step-0 losses must agree within 1e-4 and the first 20
training losses within 1e-3. Prints a table and writes parity.json.

    python scripts/gpu_parity.py --out parity.json [overrides]
"""

import argparse
import json
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ngt.config import CONF, register_configs, variant_names
from ngt.naming import register_resolvers
from ngt.rundir import RunDir
from ngt.trainer import Trainer

# The w3_25m widths at a batch a CPU takes in seconds; bundled corpus, BPE-8192.
SIZE = ["model=w3_25m", "model.dropout=0", "data=shakespeare", "data.tokenizer=bpe", "train.batch_size=4",
        "train.block_size=256", "train.grad_accum=1", "train.amp=false", "train.compile=false", "budget=gpu_check"]


def losses(variant: str, device: str, steps: int, extra: list[str], where: Path) -> list[float]:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = OmegaConf.to_object(compose("config", overrides=[f"variant={variant}", *SIZE,
                                                               f"train.device={device}", *extra]))
    trainer = Trainer(cfg, RunDir(where / f"{variant}-{device}"))
    trainer.model.train()
    return [trainer.optimizer_step() for _ in range(steps)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default="parity.json")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    register_configs()
    register_resolvers()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows = []
    for variant in variant_names():
        cpu, cuda = (losses(variant, d, args.steps, args.overrides, Path(args.out).parent / "parity") for d in ("cpu", "cuda"))
        first, worst = abs(cpu[0] - cuda[0]), max(abs(a - b) for a, b in zip(cpu, cuda))
        rows.append({"variant": variant, "cpu": cpu, "cuda": cuda, "step0_diff": first, "max_diff": worst,
                     "ok": first <= 1e-4 and worst <= 1e-3})
        print(f"{variant:22s} step 0: {cpu[0]:.6f} vs {cuda[0]:.6f} (|d| {first:.1e})  first {args.steps}: "
              f"max |d| {worst:.1e}  {'ok' if rows[-1]['ok'] else 'FAIL'}", flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
