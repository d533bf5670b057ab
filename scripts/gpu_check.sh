#!/usr/bin/env bash
# The CUDA checks of issue 5, in one go on a lent GPU (about 8 minutes on an H100/H200):
#   a) FlexAttention against the reference: outputs and every gradient, every switch setting;
#   b) full training steps at w3_25m, block 512, batch 16: baseline and NGT variants;
#   c) time and peak memory against context length, L = 256 .. 4096, baseline and ngt_default.
# Each part has its own time limit and log under $OUT; a part that fails does not stop the next.
#   OUT=/some/dir bash scripts/gpu_check.sh
set -x
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
# One inductor cache for all three parts: kernels compiled by an earlier part are reused.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/ngt-inductor-cache}

{ nvidia-smi; python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } \
    > "$OUT/env.txt" 2>&1

timeout 200 python -m pytest -m gpu tests/test_backends.py -q -p no:cacheprovider --durations=10 \
    > "$OUT/a_gpu_tests.log" 2>&1
echo "a) gpu tests: exit $?" | tee -a "$OUT/status.txt"

timeout 170 python -m ngt.bench --device cuda --model w3_25m --block 512 --batch 16 --steps 10 --warmup 3 \
    --variants baseline,ngt_default,mass_in_value,no_radius,soft_cutoff --out "$OUT/bench_w3_25m.json" \
    > "$OUT/b_bench.log" 2>&1
echo "b) bench w3_25m: exit $?" | tee -a "$OUT/status.txt"

timeout 150 python -m ngt.bench --device cuda --model w3_25m --batch 4 --context-sweep --max-context 4096 \
    --sweep-steps 3 --warmup 1 --variants baseline,ngt_default --out "$OUT/context_sweep.json" \
    > "$OUT/c_context_sweep.log" 2>&1
echo "c) context sweep: exit $?" | tee -a "$OUT/status.txt"
