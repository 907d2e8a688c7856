#!/usr/bin/env bash
# The paper's Table 1 at full size on a lent GPU: $MODELS (default skipganomaly++; the raw-pixel pca and knn
# baselines run beside them, as in every benchmark call), all ten CIFAR-10 classes,
# both protocols, seeds $SEEDS (default 0), the `paper` preset (45,000 training images, 15 epochs, the full
# 15,000-image test set), $WORKERS cells at once on the one GPU (`benchmark --workers`).
#
# Resumable across lent sessions: the cells committed under $RESULTS/cells are copied in first and reused;
# every finished cell is packed into $OUT/cells.tar within $PACK_EVERY seconds (so a run cut off by the
# device's limit keeps what it finished), and the sweep stops cleanly $TIME_LIMIT seconds after it starts
# (`benchmark --time-limit`; `run` exits 3 while cells are left). Unpack cells.tar into $RESULTS and commit; the
# next session continues.
#
# CIFAR-10 (178 MB) does not travel in one device call (64 MiB in all), so it goes in three parts:
#   here:    bash benchmarks/gpu_table1.sh pack        # .devdata/{a,b,c}: the batches, xz, about 47 MB each
#   call 1:  carry [".devdata/a"]   bash benchmarks/gpu_table1.sh unpack a
#   call 2:  carry [".devdata/b"]   bash benchmarks/gpu_table1.sh unpack b
#   call 3:  carry [".devdata/c"]   bash benchmarks/gpu_table1.sh unpack c && MEASURE=1,4,8,1 TIME_LIMIT=330 \
#                                   bash benchmarks/gpu_table1.sh run      (timeout_s 600; $OUT is the device's)
# MEASURE=1,4,8,1 first times N training processes at once against one alone (benchmarks/concurrent_cells.py,
# about 2 minutes), which says what WORKERS (default 8) should be. TIME_LIMIT leaves room in the call's 600 s
# for that, for the epoch a running cell finishes after the limit, and for the final packing.
# Each call must come while the machine is still warm (the unpacked batches stay in .devdata/cifar-10-batches-py,
# an ignored folder of the checkout). `run` checks the data first and says which part is missing.
#
# On a CPU (the tests): DATA_DIR=... DEVICE=cpu PRESET_ARGS="--train-fraction 0.01 ..." bash benchmarks/gpu_table1.sh run
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3}
DEVDATA=${DEVDATA:-.devdata}
CIFAR=cifar-10-batches-py

case "${1:-}" in
pack)
  src=${2:-../shared/data/$CIFAR}
  mkdir -p "$DEVDATA"/{a,b,c}
  if [ "$DEVDATA" = .devdata ] && [ -d .git ]; then
    grep -qx '/.devdata/' .git/info/exclude 2>/dev/null || echo '/.devdata/' >> .git/info/exclude
  fi
  for f in data_batch_1:a data_batch_2:a data_batch_3:b data_batch_4:b data_batch_5:c test_batch:c batches.meta:c; do
    xz -T0 -6 -c "$src/${f%%:*}" > "$DEVDATA/${f##*:}/${f%%:*}.xz" || exit 1
  done
  du -sh "$DEVDATA"/{a,b,c}
  ;;
unpack)
  part=${2:?unpack a, b or c}
  mkdir -p "$DEVDATA/$CIFAR"
  for f in "$DEVDATA/$part"/*.xz; do xz -dc "$f" > "$DEVDATA/$CIFAR/$(basename "$f" .xz)" || exit 1; done
  ls -la "$DEVDATA/$CIFAR"
  ;;
run)
  OUT=${OUT:-runs/gpu-table1}
  WORK=${WORK:-/tmp/gpu-table1}
  RESULTS=${RESULTS:-benchmarks/results/gpu-h200-table1}
  DATA_DIR=${DATA_DIR:-$DEVDATA}
  TIME_LIMIT=${TIME_LIMIT:-420}
  WORKERS=${WORKERS:-8}
  PACK_EVERY=${PACK_EVERY:-10}
  DEVICE=${DEVICE:-cuda}
  mkdir -p "$OUT" "$WORK/cells"
  missing=$(cd "$DATA_DIR/$CIFAR" 2>/dev/null && for f in data_batch_1 data_batch_2 data_batch_3 data_batch_4 \
            data_batch_5 test_batch batches.meta; do [ -s "$f" ] || echo -n "$f "; done; true)
  if [ ! -d "$DATA_DIR/$CIFAR" ] || [ -n "$missing" ]; then
    echo "CIFAR-10 is not complete in $DATA_DIR/$CIFAR (missing: ${missing:-the folder}); unpack parts a, b and c first"
    exit 2
  fi
  cp "$RESULTS"/cells/* "$WORK/cells/" 2>/dev/null
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
    $PY -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0], 'cpu threads', torch.get_num_threads())"
    echo "commit ${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}; committed cells copied in: $(ls "$WORK/cells" | grep -c '\.json$')"
  } > "$OUT/env.txt" 2>&1
  cat "$OUT/env.txt"
  if [ -n "${MEASURE:-}" ]; then  # aggregate throughput of N training processes on the device, in turns
    timeout 240 $PY benchmarks/concurrent_cells.py --processes "$MEASURE" --images "${MEASURE_IMAGES:-6400}" \
      --device "$DEVICE" --out "$OUT/concurrent.json" 2>&1 | grep -v Warning | tee -a "$OUT/env.txt"
  fi
  # each shell packs into its own temporary file: a tar the stopped packer had started cannot write into the last pack
  pack() { tar -C "$WORK" -cf "$OUT/cells.tar.$BASHPID.tmp" cells && mv "$OUT/cells.tar.$BASHPID.tmp" "$OUT/cells.tar"; }
  ( while sleep "$PACK_EVERY"; do pack; done ) &
  packer=$!
  trap 'kill $packer 2>/dev/null' EXIT
  start=$SECONDS
  # shellcheck disable=SC2086  # PRESET_ARGS and BENCH_ARGS are word lists
  $PY -m skipganomaly benchmark --data-dir "$DATA_DIR" ${PRESET_ARGS:---preset paper} --seeds "${SEEDS:-0}" \
    --models "${MODELS:-skipganomaly++}" --protocol "${PROTOCOLS:-honest,paper}" --workers "$WORKERS" \
    --time-limit "$TIME_LIMIT" --device "$DEVICE" --no-progress --out "$WORK" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/log.txt"
  status=${PIPESTATUS[0]}
  kill $packer 2>/dev/null
  pack
  rm -f "$OUT"/cells.tar.*.tmp
  cp "$WORK"/table.md "$WORK"/results.json "$WORK"/results.csv "$OUT/" 2>/dev/null
  echo "=== benchmark exit $status after $((SECONDS - start)) s; $(tar -tf "$OUT/cells.tar" | grep -c '\.json$') cells in $OUT/cells.tar" \
    | tee -a "$OUT/log.txt"
  exit "$status"
  ;;
*)
  sed -n '2,/^set -uo/p' "$0" | grep '^#'
  exit 2
  ;;
esac
