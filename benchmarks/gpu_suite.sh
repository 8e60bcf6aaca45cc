#!/usr/bin/env bash
# One prepared GPU session: training benchmarks at the paper's sizes (and the cost of making
# meta-batches at batch time), then a time-boxed meta-training
# run from the authors' pre-trained model with a Set14 g2.0 comparison. Results go to $OUT (or ./gpu_out).
#   DATA=folder-with-train/test/checkpoints MINUTES=4 bash benchmarks/gpu_suite.sh
set -uo pipefail
OUT=${OUT:-gpu_out}; DATA=${DATA:-../shared/data}; MINUTES=${MINUTES:-4}; DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/benchmarks" TQDM_DISABLE=1 PYTHONUNBUFFERED=1
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch; print('torch', torch.__version__)") 2>&1 | tee "$OUT/device.txt"
python3 benchmarks/bench_training.py --device "$DEVICE" ${BENCH_ARGS:-} --json "$OUT/bench_training.json" 2>&1 | tee "$OUT/bench_training.txt"
python3 benchmarks/bench_tasks.py --device "$DEVICE" --images "$DATA/train/T91" "$DATA/train/BSD200" 2>&1 | tee "$OUT/bench_tasks.txt"
python3 benchmarks/meta_evidence.py --data "$DATA" --work /tmp/mzsr_meta --budget-minutes "$MINUTES" --device "$DEVICE" \
  ${META_ARGS:-} --json "$OUT/meta_evidence.json" 2>&1 | tail -n 40 | tee "$OUT/meta_evidence.txt"
cp /tmp/mzsr_meta/meta_log.csv "$OUT/" 2>/dev/null
last=$(ls -t /tmp/mzsr_meta/meta_*.safetensors 2>/dev/null | head -n 1); [ -n "$last" ] && cp "$last" "$OUT/"
exit 0
