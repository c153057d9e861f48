#!/usr/bin/env bash
# (As run, on 2026-11-26. Its --matmul-precision high is what generator training on CUDA now sets itself; the bench flag is gone.)
# Second device call: pinned draws, matmul convolutions and CUDA graphs for stacked paper-size MUNITs.
set -u
OUT=${OUT:-/tmp/gpu_graphs}; mkdir -p "$OUT"
DEV=${DEV:-cuda}
if [ "$DEV" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
  SIZE=(--steps 30 --warmup 5); G=16,64; GRAPH=(--cuda-graph)
else
  SIZE=(--steps 2 --warmup 1 --dim 8 --n-res 1 --mlp-dim 32 --images 64); G=1,2; GRAPH=()
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
B=(python3 -m bench.bench_fused_generators --device "$DEV" --no-separate --stacking stacked --matmul-precision high "${SIZE[@]}" --groups $G)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; python3 -c "import torch; print('torch', torch.__version__)"; } >"$OUT/steps.txt"
run() {  # run NAME LIMIT CMD...
  local name=$1 lim=$2; shift 2; local s=$SECONDS
  echo "===== $name" >>"$OUT/all.log"
  timeout "$lim" "$@" >>"$OUT/all.log" 2>&1
  echo "rc=$? $name $((SECONDS - s))s" | tee -a "$OUT/steps.txt"
}
run matmul_graph 90 "${B[@]}" --conv matmul "${GRAPH[@]}" --json "$OUT/matmul_graph.json"
run matmul 70 "${B[@]}" --conv matmul --json "$OUT/matmul.json"
run grouped 80 "${B[@]}" --json "$OUT/grouped.json"
run pytest 75 python3 -m pytest -q -rfs -p no:cacheprovider tests/test_fused_generators.py -k "cuda or matmul or alone"
run grouped_graph 70 "${B[@]}" "${GRAPH[@]}" --json "$OUT/grouped_graph.json"
grep -E "^=====|G=[0-9]+:|passed|failed|Error" "$OUT/all.log"
