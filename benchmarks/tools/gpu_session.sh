#!/usr/bin/env bash
# The one prepared GPU session: 15 minutes of device time, one command of at most 10 minutes.
#   1. the card and torch version                                     -> $OUT/device.txt
#   2. the meta-step speed table: every candidate at the paper's sizes, its meta-gradient error
#      against float64, s/iteration, % of the conv floor, memory      -> $OUT/bench_training.{txt,json}
#   3. MODE=extend (default): continue models/training/$MODEL for the minutes left, evaluate on
#      Set14                                                          -> $OUT/{slot.json,last.pt,log.csv,$MODEL.safetensors}
#      MODE=ab: the first-order warm-up against second order throughout, equal time per arm -> $OUT/ab.json
# Prepare here:  python3 -m benchmarks.tools.extend_release bundle     (writes .gpu_bundle/, 20 MiB)
# Run there:     device tool, command "bash benchmarks/tools/gpu_session.sh", carry [".gpu_bundle"], timeout_s 590
# Then here:     python3 -m benchmarks.tools.extend_release adopt FILES_AT --model direct_x2; commit models/ and the outputs.
# SESSION_MINUTES bounds the whole command (default 9); SKIP_BENCH=1 gives all of it to training;
# EXTRA_ARGS go to extend_release.py (on a CPU, for a check at toy sizes: DEVICE=cpu BENCH_ARGS=--quick
# EXTRA_ARGS="--tiny --work /tmp/w --state-dir /tmp/s" BUNDLE=<a bundle made with --tiny>).
set -uo pipefail
OUT=${OUT:-gpu_out}; MODEL=${MODEL:-direct_x2}; MODE=${MODE:-extend}; DEVICE=${DEVICE:-cuda}
SESSION_MINUTES=${SESSION_MINUTES:-9}; BUNDLE=${BUNDLE:-.gpu_bundle}
mkdir -p "$OUT"
export PYTHONPATH="$PWD" TQDM_DISABLE=1 PYTHONUNBUFFERED=1
t0=$(date +%s)
minutes_left() { python3 -c "print(max(0.5, $SESSION_MINUTES - ($(date +%s) - $t0) / 60 - ${1:-0}))"; }
[ -f "$BUNDLE/theta_T.safetensors" ] || { echo "no $BUNDLE: run 'python3 -m benchmarks.tools.extend_release bundle' and carry it" >&2; exit 2; }
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)") | tee "$OUT/device.txt"

graph_flag=""
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  # the speed table; cut at BENCH_SECONDS (its JSON is rewritten after every row, so a cut run keeps its rows)
  timeout "${BENCH_SECONDS:-240}" python3 -m benchmarks.speed.training --device "$DEVICE" --json "$OUT/bench_training.json" \
    ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_training.txt"
  # train with the CUDA graph only where the benchmark captured meta_train's own step and found its
  # meta-gradient within tolerance of float64
  python3 - "$OUT/bench_training.json" <<'PY' || graph_flag="--no-cuda-graph"
import json, sys
rows = json.load(open(sys.argv[1]))["results"].get("rows", {})
row = rows.get("meta 2nd order: graph grouped", {})
sys.exit(0 if row.get("graphed") and row.get("grad_ok") else 1)
PY
fi
echo "training with ${graph_flag:-the CUDA graph (if capture works)}; $(minutes_left 2.5) minutes of training" | tee -a "$OUT/device.txt"
if [ "$MODE" = ab ]; then
  python3 -m benchmarks.tools.extend_release ab --bundle "$BUNDLE" --model "$MODEL" --device "$DEVICE" $graph_flag \
    --minutes "$(python3 -c "print($(minutes_left 4) / 2)")" --warm-up "${WARM_UP:-1000}" --out "$OUT" ${EXTRA_ARGS:-} 2>&1 | tail -n 40
else
  python3 -m benchmarks.tools.extend_release train --bundle "$BUNDLE" --model "$MODEL" --device "$DEVICE" $graph_flag \
    --minutes "$(minutes_left 2.5)" --out "$OUT" ${EXTRA_ARGS:-} 2>&1 | tail -n 60
fi
echo "session: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/device.txt"
