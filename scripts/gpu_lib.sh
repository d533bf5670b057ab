# Sourced by the GPU scripts: one output folder, one time budget, and `part`, which runs a
# command within what is left of it, its output appended to $OUT/log.txt.
OUT=${OUT:-gpu_out}
TOTAL_S=${TOTAL_S:-540}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# One inductor/triton cache for all parts: kernels compiled by an earlier part are reused.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/ngt-inductor-cache}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/ngt-triton-cache}

part() {  # part NAME LIMIT_S COMMAND...: run COMMAND, its output appended to $OUT/log.txt
  local name=$1 limit=$2 left=$((TOTAL_S - SECONDS))
  shift 2
  ((left < limit)) && limit=$left
  if ((limit < 20)); then
    echo "== $name: skipped, no time left" | tee -a "$OUT/log.txt"
    return
  fi
  local start=$SECONDS
  echo "== $name (limit $limit s)" >> "$OUT/log.txt"
  timeout "$limit" "$@" >> "$OUT/log.txt" 2>&1
  echo "== $name: exit $? after $((SECONDS - start)) s" | tee -a "$OUT/log.txt"
}
