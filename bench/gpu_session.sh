#!/usr/bin/env bash
# The GPU figures of issue 14 in one short session (under 8 minutes on an H100/H200), from the
# repository root of a fresh machine with torch, pyarrow, pandas, scikit-learn and PyYAML (no
# Ray: nothing here imports it), pydantic and optuna from .whl/:
#
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#   bash bench/gpu_session.sh                 # writes JSON + logs to $OUT (default /tmp/gpu_session)
#   bash bench/gpu_session.sh --cpu-smoke     # the same steps at tiny sizes on the CPU (tests use it)
#
# Steps (each under its own time limit; one failing does not stop the others):
#   env        versions, the GPU, which optional packages import
#   equality   bench.fused_equality: 3 members fused (grouped cuDNN convolutions) vs alone, float32,
#              TF32 off: loss and weight differences, test accuracy both ways -> equality.json
#   generators bench_fused_generators: G = 1, 4, 16, 64 paper-size MUNITs (dim 64, 4 residual
#              blocks, batch 1, 28 px) stacked in one process, as training stacks them on CUDA
#              (matmul convolutions, each step one CUDA graph) -> generators.json
#   gpu_share  bench_gpu_share (the fixed memory cap): classifiers packed 1 and 4 processes,
#              generators 1 and 4 processes, evaluation, eKLD, GIT step; its projection takes the
#              best of the packed and the fused generator rates (generators.json) -> gpu_share.json
#   fused      bench_fused: G = 1, 4, 16, 64 fused ResNet-20s at K49 size, the K49 projection with
#              the generator and eKLD rates of gpu_share.json -> fused.json (the study's GPU-hours
#              with classifiers and generators fused: k49_study.total_gpu_h)
#   compile    bench_fused at G = 16: eager vs torch.compile default vs reduce-overhead (CUDA graphs)
#              -> compile.json (eager at G = 16 is also in fused.json)
set -u
OUT="${OUT:-/tmp/gpu_session}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"

if [ "${1:-}" = "--cpu-smoke" ]; then
  DEV=cpu
  GENS=(--groups 1,2 --steps 2 --warmup 1 --dim 8 --n-res 4 --mlp-dim 256 --images 64 --separate)  # gpu_share's MUNIT at dim 8
  SHARE=(--procs 1 --gen-procs 1 --steps 2 --warmup 1 --gen-steps 2 --gen-warmup 1 --gen-dim 8 --images 128 --git-steps 0)
  FUSED=(--groups 1,2 --epochs 2 --images 64 --batch 16 --width 2 --separate)
  COMPILE=(--groups 2 --epochs 2 --images 64 --batch 16 --width 2 --no-separate --compile none --compile-group 2 --no-projection)
  EQUAL=(--arch small_cnn --epochs 1)
  LIMITS=(60 240 240 240 240 240)
else
  DEV=cuda
  GENS=(--groups 1,4,16,64 --steps 30 --warmup 5)
  SHARE=(--procs 1,4 --gen-procs 1,4 --steps 100 --warmup 20 --gen-steps 40 --gen-warmup 10 --git-steps 10)
  FUSED=(--groups 1,4,16,64 --epochs 2)
  COMPILE=(--groups 16 --epochs 2 --no-projection --compile default,reduce-overhead --compile-group 16)
  EQUAL=(--arch resnet20 --epochs 2)
  LIMITS=(30 45 90 110 110 100)  # 8 minutes at most in all
fi

step() {  # step NAME LIMIT_S CMD...: run with a time limit, log to $OUT/NAME.log, show its tail
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc in $((SECONDS - start))s" | tee -a "$OUT/steps.txt"
  tail -n 40 "$OUT/$name.log"
}

step env "${LIMITS[0]}" "$PY" -c "
import importlib, platform, torch
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda)
print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')
for m in ('git_ray.trial', 'pydantic', 'optuna', 'pyarrow', 'sklearn', 'PIL', 'torchvision', 'ray'):
    try:
        importlib.import_module(m); print('import', m, 'ok')
    except Exception as e:
        print('import', m, 'MISSING', type(e).__name__, e)
"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$OUT/env.log" 2>&1

step equality "${LIMITS[1]}" "$PY" -m bench.fused_equality --device "$DEV" "${EQUAL[@]}" --json "$OUT/equality.json"

step generators "${LIMITS[2]}" "$PY" -m bench.bench_fused_generators --device "$DEV" "${GENS[@]}" --json "$OUT/generators.json"

if [ -s "$OUT/generators.json" ]; then
  GEN_FUSED=(--gen-fused-json "$OUT/generators.json")
else  # the generator bench failed: the projection uses the packed processes' rate alone
  GEN_FUSED=()
fi
step gpu_share "${LIMITS[3]}" "$PY" -m bench.bench_gpu_share --device "$DEV" "${SHARE[@]}" "${GEN_FUSED[@]}" --json "$OUT/gpu_share.json"

if [ -s "$OUT/gpu_share.json" ]; then
  PROJ=(--share-json "$OUT/gpu_share.json")
else  # gpu_share failed: measure one generator process here instead
  PROJ=()
fi
step fused "${LIMITS[4]}" "$PY" -m bench.bench_fused --device "$DEV" "${FUSED[@]}" "${PROJ[@]}" --json "$OUT/fused.json"

step compile "${LIMITS[5]}" "$PY" -m bench.bench_fused --device "$DEV" "${COMPILE[@]}" --json "$OUT/compile.json"

echo "== done: $(ls "$OUT" | tr '\n' ' ')"
