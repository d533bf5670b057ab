#!/usr/bin/env bash
# Issue 16, part 2, on one CUDA GPU (under ten minutes on an H200): the w3_25m grid through
# `python -m ngt.screen -m` under the CUDA defaults (compiled, CUDA graphs, bf16), on the
# bundled corpus under byte-level BPE 8192 (WikiText-103 needs the internet), budget
# gpu_check; the report it writes by itself is copied to $OUT/report, with the GPU, torch and
# CUDA versions, and $OUT/projection.txt gives the full 15k-step grid's wall time from the
# measured steps/s beside the original's 25 GPU-hours.
#   OUT=/some/dir bash scripts/gpu_screen.sh
OUT=${OUT:-gpu_screen_out}
source "$(dirname "$0")/gpu_lib.sh"
SWEEP=$OUT/w3_25m

part env 30 bash -c 'nvidia-smi; python -c "import torch, triton; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"triton\", triton.__version__)"'
part grid 480 python -m ngt.screen -m sweep=w3_25m data=shakespeare data.tokenizer=bpe data.vocab_size=8192 \
    budget=gpu_check train.device=cuda "hydra.sweep.dir=$SWEEP"
mkdir -p "$OUT/report"
cp "$SWEEP"/{Summary.md,report.md,results.csv} "$OUT/report/" 2>/dev/null
python - "$SWEEP" > "$OUT/projection.txt" 2>&1 <<'PY'
import sys
import pandas as pd
import torch

runs = pd.read_csv(f"{sys.argv[1]}/results.csv")
print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
total = 0.0
for _, r in runs.iterrows():
    hours = 15000 / r["steps_per_s"] / 3600
    total += hours
    print(f"{r['name']:24s} {r['steps_per_s']:6.2f} steps/s (window {r['throughput_window']}) -> 15k steps in {hours:.2f} h")
print(f"the six 15k-step runs: {total:.1f} GPU-hours here; the original: 15000/4.96 + 5 x 15000/0.85 s = "
      f"{(15000 / 4.96 + 5 * 15000 / 0.85) / 3600:.1f} GPU-hours")
PY
cat "$OUT/projection.txt" | tee -a "$OUT/log.txt"
