#!/usr/bin/env bash
# One command for every GPU figure: bash experiments/gpu_suite.sh OUTDIR
# Runs on one H100/H200 in about 9 minutes: the streaming suite (7B, 720p: 2 FPS streaming + roofline,
# recompute, 8 FPS, B = 1..8 streams, cuDNN attention, int8 weights; 20 s of stream each after its compile)
# and bench_train --gpu (MFU), each under a hard time limit, then prints the summary table.
# Figures: OUTDIR/gpu_suite.json, OUTDIR/bench_train_gpu.json and PNGs.
set -uo pipefail
out=${1:?usage: bash experiments/gpu_suite.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1 || true
timeout 430 python -m experiments.gpu_suite --out "$out" --budget-s 20 --seconds 120 2>&1 | tee "$out/gpu_suite.log"
timeout 100 python -m experiments.bench_train --gpu --steps 10 --out "$out/bench_train_gpu.json" 2>&1 \
  | tee "$out/bench_train.log"
python - "$out" <<'PY'
import json, sys
from experiments.gpu_suite import print_table
out = sys.argv[1]
try:
    print_table(json.load(open(f"{out}/gpu_suite.json")))
except OSError as e:
    print(f"no gpu_suite.json: {e}")
try:
    for r in json.load(open(f"{out}/bench_train_gpu.json")):
        print(f"train {r['name']}: {r.get('tokens_per_s', float('nan')):.0f} tok/s, MFU {r.get('mfu')}")
except OSError as e:
    print(f"no bench_train_gpu.json: {e}")
PY
