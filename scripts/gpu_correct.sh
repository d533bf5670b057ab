#!/usr/bin/env bash
# Issue 16, parts 3 and 4, on one CUDA GPU (under ten minutes; figures to $OUT):
#   parity     CPU vs CUDA, fp32 eager, first 20 losses, every variant (scripts/gpu_parity.py)
#   graphs     compiled under CUDA graphs vs eager, the same ngt_default run: final val loss
#   kill       kill -9 mid-run under CUDA graphs with train.deterministic=true, relaunch: the
#              metrics must equal an uninterrupted run's
#   recompile  mass_in_value and repulsion_interval_8 (two step graphs taking turns): graphs
#              dynamo built over 16 steps (ngt.bench's count)
#   share      the grid's wall time with 1, 2 and 3 runs at a time on the one GPU
#              (hydra/launcher=local hydra.sweeper.max_batch_size=K), later runs' compile time
#   OUT=/some/dir bash scripts/gpu_correct.sh
OUT=${OUT:-gpu_correct_out}
source "$(dirname "$0")/gpu_lib.sh"
RUN=(python -m ngt.screen model=w3_25m data=shakespeare data.tokenizer=bpe budget=gpu_check train.device=cuda
     train.batch_size=16 train.block_size=512 train.grad_accum=2 model.dropout=0.1)

part parity 150 python scripts/gpu_parity.py --out "$OUT/parity.json"
part graphs_on 60 "${RUN[@]}" variant=ngt_default "hydra.run.dir=$OUT/graphs/on"
part graphs_off 60 "${RUN[@]}" variant=ngt_default train.compile=false "hydra.run.dir=$OUT/graphs/off"
part kill_reference 60 "${RUN[@]}" variant=ngt_default train.deterministic=true "hydra.run.dir=$OUT/kill/reference"
part kill 90 bash -c '"$@" & pid=$!; until grep -q "\"step\": 200" "$RUN_DIR/metrics.jsonl" 2>/dev/null; do sleep 0.2; done;
    kill -9 $pid; wait $pid; "$@"' _ "${RUN[@]}" variant=ngt_default train.deterministic=true \
    "hydra.run.dir=$OUT/kill/killed" RUN_DIR="$OUT/kill/killed"
part recompile 90 python -m ngt.bench --device cuda --model w3_25m --block 512 --batch 16 --warmup 16 --steps 4 \
    --variants mass_in_value,repulsion_interval_8 --out "$OUT/recompile.json" model.dropout=0.1
for k in 1 2 3; do
  part "share_$k" 120 python -m ngt.screen -m sweep=w3_25m data=shakespeare data.tokenizer=bpe budget=gpu_check \
      budget.max_steps=100 budget.eval_every=50 train.device=cuda hydra/launcher=local \
      hydra.sweeper.max_batch_size=$k "hydra.sweep.dir=$OUT/share_$k"
done
python - "$OUT" <<'PY' | tee -a "$OUT/log.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def summary(run):
    p = out / run / "summary.json"
    return json.loads(p.read_text()) if p.exists() else {}
on, off = summary("graphs/on"), summary("graphs/off")
if on and off:
    gap = abs(on["val_loss_final"] - off["val_loss_final"]) / off["val_loss_final"]
    print(f"graphs vs eager: val loss {on['val_loss_final']:.4f} vs {off['val_loss_final']:.4f} ({gap:.2%}; target < 1%)")
rows = lambda run: [{k: v for k, v in json.loads(l).items() if k != "elapsed_s"}
                    for l in (out / run / "metrics.jsonl").read_text().splitlines()]
if (out / "kill/killed/metrics.jsonl").exists() and (out / "kill/reference/metrics.jsonl").exists():
    print("kill -9 and relaunch, deterministic, CUDA graphs: metrics",
          "identical" if rows("kill/killed") == rows("kill/reference") else "DIFFER")
if (out / "recompile.json").exists():
    for v in json.loads((out / "recompile.json").read_text())["variants"]:
        print(f"{v['variant']}: {v['compiled']['graphs']} graphs in 16 warm-up steps (2 expected: with and without repulsion)")
for k in (1, 2, 3):
    runs = sorted((out / f"share_{k}").glob("variant=*/summary.json"))
    print(f"{k} run(s) at a time: {len(runs)} runs; see log.txt for the share_{k} wall time")
PY
