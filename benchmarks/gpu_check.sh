#!/usr/bin/env bash
# Every GPU figure the project quotes, in one run of at most 8 minutes: the first thing to run
# whenever a GPU machine is lent.
#
#   OUT=/tmp/gpu-check benchmarks/gpu_check.sh           # on the GPU (cuda when torch sees one)
#   OUT=/tmp/gpu-check benchmarks/gpu_check.sh --quick   # tiny sizes on the CPU: proves it runs (tests do)
#
# Figures (each step's log and JSON) go under $OUT (default: ./gpu-check-<date>):
#   train/gpu_train.json, train.log   training groups of 64, 128 and 256 models on 1500 x 16 x 1024
#                                     random features (benchmarks/gpu_train.py)
#   pipeline.log                      trainer busy fraction at 5 s LLM latency against the local fake
#                                     server, training on 1500 x 16 x 1024 features (benchmarks/pipeline.py)
#   extract.log                       extraction: V-JEPA 2 ViT-L at real size (benchmarks/extract.py)
#   predict/predict.json, predict.log predict throughput, videos per second (benchmarks/predict.py)
#   summary.txt                       one line per step: exit code and seconds
# Each step has its own time limit, so a slow or failing one costs its share and the rest still run.
# PYTHON picks the interpreter command (default: python). Exit code: the number of steps that failed.
set -u
cd "$(dirname "$0")/.."
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
OUT="${OUT:-gpu-check-$(date -u +%Y%m%dT%H%M%S)}"
read -ra PY <<< "${PYTHON:-python}"  # may carry arguments, e.g. "uv run python"
mkdir -p "$OUT"
if [ "$QUICK" = 1 ]; then
  DEV=cpu
else
  DEV=$("${PY[@]}" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
fi
echo "gpu_check: device $DEV, quick $QUICK, figures under $OUT" | tee "$OUT/summary.txt"
[ "$QUICK" = 0 ] && [ "$DEV" = cpu ] && echo "gpu_check: no CUDA device: the figures below are CPU figures" | tee -a "$OUT/summary.txt"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1

FAILED=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, note the outcome
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  [ "$rc" != 0 ] && FAILED=$((FAILED + 1))
  echo "$name: exit $rc in $(( $(date +%s) - start )) s (limit $limit s)$([ "$rc" = 124 ] && echo ', timed out')" \
    | tee -a "$OUT/summary.txt"
}

if [ "$QUICK" = 1 ]; then
  step train 120 "${PY[@]}" benchmarks/gpu_train.py --device cpu --quick --encoders gru --out "$OUT/train"
  step pipeline 120 "${PY[@]}" benchmarks/pipeline.py --latency 0.2 --budget 8 --videos 12 --modes pipeline \
    --features 120x16x64
  step extract 120 "${PY[@]}" benchmarks/extract.py --device cpu --backbones pixels --videos 4 --no-cli --no-readme \
    --model-seconds 0.5 --work-dir "$OUT/extract-data"
  step predict 120 "${PY[@]}" benchmarks/predict.py --quick --out "$OUT/predict"
else
  # 8 minutes in all: 150 + 120 + 120 + 90 s, plus start-up
  step train 150 "${PY[@]}" benchmarks/gpu_train.py --device "$DEV" --models 64,128,256 --encoders transformer,gru \
    --time-limit-s 100 --out "$OUT/train"
  step pipeline 120 "${PY[@]}" benchmarks/pipeline.py --latency 5 --budget 240 --modes concurrent,pipeline \
    --features 1500x16x1024 --device "$DEV"
  step extract 120 "${PY[@]}" benchmarks/extract.py --device "$DEV" --videos 32 --no-readme --work-dir "$OUT/extract-data"
  step predict 90 "${PY[@]}" benchmarks/predict.py --device "$DEV" --backbone vjepa2_vitl --weights random-full \
    --videos 16 --out "$OUT/predict"
fi
echo "gpu_check: $FAILED step(s) failed; figures under $OUT" | tee -a "$OUT/summary.txt"
exit "$FAILED"
