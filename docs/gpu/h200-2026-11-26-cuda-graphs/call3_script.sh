#!/usr/bin/env bash
# (As run, on 2026-11-26. Its --matmul-precision high is what generator training on CUDA now sets itself; the bench flag is gone.)
set -u
OUT=${OUT:-/tmp/gpu_last}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
timeout 70 python3 -m pytest -q -rfs -p no:cacheprovider tests/test_fused_generators.py -k "cuda_graph" 2>&1 | tee "$OUT/pytest.log" | tail -25
timeout 60 python3 -m bench.bench_fused_generators --device cuda --no-separate --stacking stacked --matmul-precision high \
  --conv matmul --cuda-graph --groups 64 --steps 100 --warmup 5 --json "$OUT/matmul_graph_g64_100.json" 2>&1 | tee "$OUT/bench.log" | grep -E "G=|peak|wall"
