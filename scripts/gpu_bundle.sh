#!/usr/bin/env bash
# The wheels a GPU machine without internet lacks to run ngt from this checkout, into .whl/
# (git ignores it through .git/info/exclude), for a device run that carries it:
#   bash scripts/gpu_bundle.sh                       # here, where PyPI is reachable
#   pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD             # there, first in the command
# Which wheels: ngt's requirements that the lent H200 image does not hold (its package list
# in the device tool's KINDS.md: it has torch, numpy, pandas, scipy, tensorboard, tokenizers,
# pyyaml, filelock, narwhals), built for its Python 3.12 by scripts/wheelhouse.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-3.12}
NEEDED=(hydra_core omegaconf antlr4_python3_runtime hydra_submitit_launcher submitit plotly)
python scripts/wheelhouse.py --python "$PY" --without datasets --out "build/wheelhouse-gpu-$PY" --no-tar
rm -rf .whl && mkdir .whl
for name in "${NEEDED[@]}"; do cp "build/wheelhouse-gpu-$PY"/${name}-*.whl .whl/; done
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
du -sh .whl && ls .whl
