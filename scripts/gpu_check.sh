#!/usr/bin/env bash
# The CUDA checks of issue 5, in one go on a GPU (about 8 minutes on an H100 or H200):
#   b) full training steps at w3_25m, block 512, batch 16 with the recipe's dropout 0.1, baseline
#      and ngt_default as training runs them on CUDA (compiled, under CUDA graphs), with the
#      graphs and graph breaks dynamo made of each step, each profiled for two steps (device
#      busy time, kernels, host syncs, top ops by device and by host time);
#   a) the triton backend against reference: outputs and every gradient, every switch
#      setting, dropout, bf16 values, both backwards, every tile shape of the one-pass one
#      (no autotuning), fresh dropout masks under CUDA graphs; then the whole-model test
#      with autotuning, which re-runs kernels that add into their outputs (restore_value);
#   b') compiled without CUDA graphs (train.compile_mode=default), under
#      train.deterministic=true (the two-pass backward), then eager (train.compile=false);
#   c) time and peak memory against context length, L = 256 .. 4096, baseline and ngt_default;
#   d) the trainer end to end on CUDA: a smoke run of mass_in_value (repulsion every 4th step,
#      so two graphs take turns) and baseline.
# They run in this order: what settles the target and the kernels' correctness first.
# Every part's output goes to $OUT/log.txt (bench tables and JSON files beside it). Each
# part has its own time limit, cut to what is left of TOTAL_S seconds (default 540) so the
# whole run ends in time; a part that fails or has no time left does not stop the next.
#   OUT=/some/dir bash scripts/gpu_check.sh
#   AB_TREE=/path/to/an/older/checkout OUT=/some/dir bash scripts/gpu_check.sh  # that tree's b) too
OUT=${OUT:-gpu_check_out}
source "$(dirname "$0")/gpu_lib.sh"

part env 30 bash -c 'nvidia-smi; python -c "import torch, triton; print(\"torch\", torch.__version__, \"triton\", triton.__version__)"'

BENCH=(python -m ngt.bench --device cuda --model w3_25m --block 512 --batch 16 --steps 30 --warmup 3)
VARIANTS=baseline,ngt_default,mass_in_value
# Compiling and autotuning from cold: about 35-50 s a variant. Options before overrides: an
# older ngt.bench (AB_TREE) takes them in that order only.
part b_default 200 "${BENCH[@]}" --variants baseline,ngt_default --profile 2 --out "$OUT/bench_default.json" \
    model.dropout=0.1

# Parity tests in parallel processes where pytest-xdist is installed: compiling the kernels
# is most of their time.
XDIST=$(python -c "import xdist" 2>/dev/null && echo "-n 8")
part a_tests 120 env NGT_TRITON_AUTOTUNE=0 python -m pytest $XDIST -p no:cacheprovider -rfs -m "gpu or not slow" \
    tests/test_triton_gravity.py -k "not under_the_interpreter"

if [[ -n $AB_TREE ]]; then
  # Its own caches: the other tree's kernels share names with these.
  part ab_default 90 env -C "$AB_TREE" PYTHONPATH="$AB_TREE:$PYTHONPATH" \
      TORCHINDUCTOR_CACHE_DIR=/tmp/ngt-ab-inductor TRITON_CACHE_DIR=/tmp/ngt-ab-triton \
      "${BENCH[@]}" --variants baseline,ngt_default --out "$OUT/bench_ab.json" model.dropout=0.1
fi
part a_tuned 90 python -m pytest -p no:cacheprovider -rfs tests/test_triton_gravity.py -k whole_model
part b_no_graphs 150 "${BENCH[@]}" --variants $VARIANTS --out "$OUT/bench_no_graphs.json" model.dropout=0.1 \
    train.compile_mode=default
part b_deterministic 100 "${BENCH[@]}" --variants baseline,ngt_default --out "$OUT/bench_deterministic.json" \
    model.dropout=0.1 train.deterministic=true
part b_eager 120 "${BENCH[@]}" --variants $VARIANTS --profile 2 --out "$OUT/bench_eager.json" model.dropout=0.1 \
    train.compile=false
part c_context_sweep 90 python -m ngt.bench --device cuda --model w3_25m --batch 4 --context-sweep --max-context 4096 \
    --sweep-steps 3 --warmup 1 --variants baseline,ngt_default --out "$OUT/context_sweep.json" train.compile=false
# Without the sweep report's callback: it needs pandas and plotly, which a bare GPU machine may
# lack (hydra then fails to locate it), and a single run does not use it.
for variant in mass_in_value baseline; do
  part "d_train_$variant" 90 python -m ngt.screen variant=$variant budget=smoke train.device=cuda \
      '~hydra.callbacks.report' hydra.run.dir=/tmp/ngt-gpu-check/$variant
done
