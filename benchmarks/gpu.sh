#!/usr/bin/env bash
# The accelerator figures (benchmarks/gpu_bench.py) on a lent GPU, within BENCH_BUDGET_S
# (default 420 s: later figures are skipped); BENCH_FIGURES=a,b runs only those figures, in
# that order.
# Writes $OUT/gpu_results.json when OUT is set. Needs JAX with CUDA and Flax/Optax on the
# machine; ml-collections and grain (with its needs) travel as wheels in .whl/ (see
# /work/.library/device/README.md). BENCH_CODE=dir benchmarks dir/predvdm_jax instead of this
# checkout's (the code before a change, e.g. from `git archive`), with this checkout's scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1 && ! python3 -c "import ml_collections, grain" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=${BENCH_CODE:+$BENCH_CODE:}$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
BENCH_BUDGET_S=${BENCH_BUDGET_S:-420} python3 benchmarks/gpu_bench.py
