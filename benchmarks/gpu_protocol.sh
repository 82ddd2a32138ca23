#!/usr/bin/env bash
# The GPU protocol (issue 20, docs/GPU.md): one command for a lent GPU machine, ~8 minutes, results to $OUT as it goes.
#
#   benchmarks/gpu_protocol.sh [--dry-run]
#
# Run from the repository root on the device, with kit/ (make device-kit) carried. Steps, each under its own
# time budget (a step that overruns is stopped and the next one runs; what was written stays in $OUT):
#   install     the kit's wheels (mlflow-skinny, optuna, albumentations, pretrainedmodels), offline
#   data        kit/tgs.npz -> a Kaggle-layout folder (the real 3000 training tiles)
#   smoke       one epoch of the reference pipeline (ResNet-34) with AMP + channels_last and the LR finder;
#               asserts a FINISHED run, finite losses, fp16 and GPU metrics in the run
#   throughput  benchmarks/bench_gpu.py: model alone vs loader alone vs both, resnet34 / se_resnext50, batch 16 / 64
#   quality     fold 0 of the reference pipeline with ResNet-34 under a 3-minute budget: cv_map, OOF bins
#   pack        results.json (every step's status and figures) and the compact MLflow store (no weights)
set -uo pipefail

DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-/tmp/gpu-protocol-out}
WORK=${WORK:-/tmp/gpu-protocol}
DATA=$WORK/tgs
KIT=${KIT:-kit}
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 MPLBACKEND=Agg
export MLFLOW_TRACKING_URI=sqlite:///$WORK/mlflow.db SALT_EXP_WORK=$WORK/work SALT_EXP_CACHE=$WORK/cache
export SALT_EXP_FOLDS=$WORK/folds
COMMON=(--set data.root=$DATA --set model.encoder=resnet34 --set model.weights=none --set train.workers=8)

declare -a NAMES BUDGETS CMDS
add() { NAMES+=("$1"); BUDGETS+=("$2"); CMDS+=("$3"); }
add install 60 "$PY -m pip install -q --no-index --find-links $KIT/wheels mlflow-skinny==3.17.2 optuna==5.0.0 albumentations==2.0.8 albucore==0.0.24 pretrainedmodels==0.7.4"
add data 45 "$PY benchmarks/device_kit.py unpack $KIT/tgs.npz $DATA"
add smoke 75 "$PY -m salt_exp train configs/base.yaml --fold 0 --study gpu-smoke ${COMMON[*]} --set schedule.cycles=1 --set schedule.cycle_epochs=1 --set lr_find.steps=30 --set optim.lr=auto && $PY benchmarks/gpu_check.py smoke gpu-smoke"
add throughput 90 "$PY benchmarks/bench_gpu.py --data $DATA --out $OUT/throughput.json --workers 8 --steps 30"
add quality 240 "$PY -m salt_exp cv configs/base.yaml --folds 0 --study gpu-quality ${COMMON[*]} --set schedule.budget_minutes=3"
add pack 20 "$PY benchmarks/gpu_check.py pack gpu-quality $OUT"

total=0
for i in "${!NAMES[@]}"; do total=$((total + BUDGETS[i])); done
if [ $DRY = 1 ]; then
  for i in "${!NAMES[@]}"; do printf '%-10s %4ss  %s\n' "${NAMES[i]}" "${BUDGETS[i]}" "${CMDS[i]}"; done
  awk -v t="$total" 'BEGIN { printf "total      %4ds  (%.1f min of the 15-minute device allowance; the machine start is extra)\n", t, t / 60 }'
  exit 0
fi

mkdir -p "$OUT" "$WORK"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1 || true
for i in "${!NAMES[@]}"; do
  name=${NAMES[i]} budget=${BUDGETS[i]}
  t0=$(date +%s%N)
  timeout --kill-after=10 "$budget" bash -c "${CMDS[i]}" > "$OUT/$name.log" 2>&1
  rc=$?
  dt=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
  printf '{"step": "%s", "rc": %d, "seconds": %s, "budget_s": %d}\n' "$name" "$rc" "$dt" "$budget" >> "$OUT/steps.jsonl"
  printf '[gpu-protocol] %-10s rc %3d in %6ss (budget %ds)\n' "$name" "$rc" "$dt" "$budget"
  tail -n 3 "$OUT/$name.log"
done
