#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (which has PyTorch but not this package installed):
# the CUDA tests, the speed benchmark on the GPU, whole-epoch wall times through the training loop, and
# the digits demo. Results go to $OUT (default runs/gpu-check); each step has its own time limit, and a
# failing step does not stop the next.
#
#     bash benchmarks/gpu_check.sh     # about 4 minutes on an H200 without the compile step (timed once,
#                                      # at git 51d20b9), which may take up to 4 more
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
PY=${PY:-python3}
step() {  # step SECONDS NAME COMMAND...: run with a limit, log to $OUT/log.txt, report the status
  local limit=$1 name=$2; shift 2
  echo "=== $name: $*" | tee -a "$OUT/log.txt"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tr '\r' '\n' | grep -v -e 'it/s' -e 'batch/s' -e 'epoch/s' -e '^\s*$' | tee -a "$OUT/log.txt"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$OUT/log.txt"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $PY -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0], 'cpu threads', torch.get_num_threads())"
  echo "commit ${COMMIT:-unknown}"; } 2>&1 | tee "$OUT/log.txt"

step 120 cuda-tests $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py
step 120 bench-all-b64 $PY -m skipganomaly bench-speed --models all --device cuda --amp --steps 10 --repeats 5 \
  --model-arg anogan:search_steps=20 --out "$OUT/speed-gpu-b64.json"
step 60 epoch-45k $PY benchmarks/epoch_time.py --images 45000 --epochs 2 --device cuda --out "$OUT/epoch-gpu.json"
step 60 bench-pp-b512 $PY -m skipganomaly bench-speed --models skipganomaly++ --device cuda --amp --batch-size 512 \
  --score-batch 2048 --steps 10 --repeats 5 --out "$OUT/speed-gpu-b512.json"
step 45 epoch-amp $PY benchmarks/epoch_time.py --images 20000 --epochs 2 --device cuda --amp
step 30 epoch-b512 $PY benchmarks/epoch_time.py --images 20000 --epochs 2 --device cuda --batch-size 512
step 240 compile $PY benchmarks/gpu_compile.py --device cuda --steps 50
step 60 reference-on-cpu $PY -m skipganomaly bench-speed --models skipganomaly++ --device cuda --compare-reference \
  --steps 2 --repeats 3 --no-onnx --out "$OUT/speed-gpu-vs-cpu-reference.json"
step 60 demo-digit0 $PY -m skipganomaly demo --digits 0 --out /tmp/demo
cp /tmp/demo/table.md "$OUT/demo-table.md" 2>/dev/null
echo "=== done"
