#!/usr/bin/env bash
# (As run, on 2026-11-26. Its --matmul-precision high is what generator training on CUDA now sets itself; the bench flag is gone.)
# One device call: stacked paper-size MUNIT steps/s, grouped vs matmul convolutions (issue 14's gap).
set -u
OUT=${OUT:-/tmp/gpu_convs}; mkdir -p "$OUT"
DEV=${DEV:-cuda}
if [ "$DEV" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
  SIZE=(--steps 30 --warmup 5); PSIZE=(--steps 5 --warmup 3); G=16,64; GP=64; GG=16
else
  SIZE=(--steps 2 --warmup 1 --dim 8 --n-res 1 --mlp-dim 32 --images 64); PSIZE=("${SIZE[@]}"); G=1,2; GP=2; GG=2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
B=(python3 -m bench.bench_fused_generators --device "$DEV" --no-separate --stacking stacked)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; python3 -c "import torch; print('torch', torch.__version__)"; } >"$OUT/steps.txt"
run() {  # run NAME LIMIT CMD...
  local name=$1 lim=$2; shift 2; local s=$SECONDS
  echo "===== $name" >>"$OUT/all.log"
  timeout "$lim" "$@" >>"$OUT/all.log" 2>&1
  echo "rc=$? $name $((SECONDS - s))s" | tee -a "$OUT/steps.txt"
}
run matmul_tf32 100 "${B[@]}" "${SIZE[@]}" --groups $G --conv matmul --matmul-precision high --json "$OUT/matmul_tf32.json"
run matmul_bf16 100 "${B[@]}" "${SIZE[@]}" --groups $G --conv matmul --matmul-precision high --autocast bf16 --json "$OUT/matmul_bf16.json"
run matmul_prof 60 "${B[@]}" "${PSIZE[@]}" --groups $GP --conv matmul --matmul-precision high --profile
run grouped_prof 60 "${B[@]}" "${PSIZE[@]}" --groups $GG --profile
run grouped 120 "${B[@]}" "${SIZE[@]}" --groups $G --json "$OUT/grouped.json"
grep -E "^=====|G=[0-9]+:" "$OUT/all.log"
