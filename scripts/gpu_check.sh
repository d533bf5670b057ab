#!/usr/bin/env bash
# The CUDA checks of issue 5, in one go on a lent GPU (about 8 minutes on an H100/H200):
#   a) the flex and triton backends against reference: outputs and every gradient, every
#      switch setting, dropout, bf16 values;
#   b) full training steps at w3_25m, block 512, batch 16, baseline and NGT variants, on the
#      triton backend, then on flex, with SPEC's dropout 0.1 and without;
#   c) time and peak memory against context length, L = 256 .. 4096, baseline and ngt_default.
# Each part has its own time limit and log under $OUT; a part that fails does not stop the next.
#   OUT=/some/dir bash scripts/gpu_check.sh
set -x
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
# One inductor/triton cache for all parts: kernels compiled by an earlier part are reused.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/ngt-inductor-cache}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/ngt-triton-cache}

{ nvidia-smi; python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } \
    > "$OUT/env.txt" 2>&1

timeout 150 python -m pytest -m gpu tests/test_backends.py -q -p no:cacheprovider -rf \
    > "$OUT/a_flex_tests.log" 2>&1
echo "a) flex tests: exit $?" | tee -a "$OUT/status.txt"
timeout 120 python -m pytest tests/test_triton_gravity.py -k "not under_the_interpreter" -q -p no:cacheprovider -rf \
    > "$OUT/a_triton_tests.log" 2>&1
echo "a) triton tests: exit $?" | tee -a "$OUT/status.txt"

VARIANTS=baseline,ngt_default,mass_in_value,no_radius,soft_cutoff
for impl in triton flex; do
  for drop in 0.1 0.0; do
    timeout 100 python -m ngt.bench --device cuda --model w3_25m --block 512 --batch 16 --steps 10 --warmup 3 \
        --impl $impl --variants $VARIANTS --out "$OUT/bench_${impl}_drop${drop}.json" model.dropout=$drop \
        > "$OUT/b_bench_${impl}_drop${drop}.log" 2>&1
    echo "b) bench w3_25m $impl dropout $drop: exit $?" | tee -a "$OUT/status.txt"
  done
done

timeout 120 python -m ngt.bench --device cuda --model w3_25m --batch 4 --context-sweep --max-context 4096 \
    --sweep-steps 3 --warmup 1 --impl triton --variants baseline,ngt_default --out "$OUT/context_sweep.json" \
    > "$OUT/c_context_sweep.log" 2>&1
echo "c) context sweep: exit $?" | tee -a "$OUT/status.txt"
