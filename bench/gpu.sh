#!/usr/bin/env bash
# Everything a lent GPU machine should do, in one call: GPU tests, then the GPU benchmark.
#
# Prepare here (the GPU machine reaches no package registry; it has CuPy, NumPy, Numba and
# pytest, not gensim):
#   bash bench/gpu_wheels.sh                     # gensim + smart_open wheels into .whl/
#   .venv/bin/python bench/corpora.py            # bench/data/enwiki-sample.txt
# Then run, with the device tool, from the repository root:
#   command: bash bench/gpu.sh   carry: [".whl", "bench/data/enwiki-sample.txt"]
# and copy the table it prints into bench/RESULTS.md.
set -euo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
step() { echo "== $1 (at ${SECONDS} s)"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import cupy, numpy, numba; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'numba', numba.__version__)"
# The benchmark runs even when a test fails, and each step has a time limit inside the device
# call's ten minutes, so one call always brings back figures.
step "gpu tests"
tests=0
timeout "${TEST_SECONDS:-150}" python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" || tests=$?
step "benchmark"
bench=0
timeout "${BENCH_SECONDS:-330}" python3 bench/train_gpu.py --words "${WORDS:-50000000}" --json "$OUT/train_gpu.json" 2>&1 | tee "$OUT/train_gpu.log" || bench=$?
step "small corpus"
timeout "${SMALL_SECONDS:-60}" python3 bench/gpu_small_corpus.py 2>&1 | tee "$OUT/gpu_small_corpus.log" || true
# Launch shapes for tuning, in whatever time is left of the call (its figures are a bonus).
step "launch shapes"
timeout "${SWEEP_SECONDS:-60}" python3 bench/gpu_sweep.py 2>&1 | tee "$OUT/gpu_sweep.log" || true
step "done"
echo "gpu tests exit $tests, benchmark exit $bench"
exit $(( tests || bench ))
