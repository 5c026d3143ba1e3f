#!/usr/bin/env bash
# Train and evaluate BKD on CIFAR-N label sets for one seed (the original's run.sh by default:
# seed 0, CIFAR-10 aggre, worst, rand1; training, then learning.py and detection.py for each).
#
# Usage: bash run.sh [--quick] [extra training flags ...]
#   --quick                 the CPU-sized preset (README, 'Quick preset'): minutes instead of hours
#   extra flags             passed to blind_knowledge_dist_training.py (e.g. --resume, --val_ratio 0)
# Environment (all optional):
#   SEED=0  DATASET=cifar10  NOISE_TYPES="aggre worst rand1"  RESULTS_DIR=results
#   BKD_DATA_ROOT=~/data (CIFAR images)  NOISE_PATH=<CIFAR-N .pt file>  DEVICE=auto  PYTHON=python
# Logs: <run dir>/training.log (appended), learning.log, detection.log.
set -euo pipefail
cd "$(dirname "$0")"

SEED=${SEED:-0}
DATASET=${DATASET:-cifar10}
NOISE_TYPES=${NOISE_TYPES:-aggre worst rand1}
RESULTS_DIR=${RESULTS_DIR:-results}
DEVICE=${DEVICE:-auto}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

PRESET=default
if [ "${1:-}" = "--quick" ]; then
  PRESET=quick
  shift
fi

common=(--dataset "$DATASET" --seed "$SEED" --results_dir "$RESULTS_DIR" --preset "$PRESET" --device "$DEVICE")
if [ -n "${NOISE_PATH:-}" ]; then common+=(--noise_path "$NOISE_PATH"); fi

fail() {
  echo "run.sh: $1 failed (exit $2); see $3" >&2
  exit "$2"
}

for NOISE_TYPE in $NOISE_TYPES; do
  name="${DATASET}_${NOISE_TYPE}_seed_${SEED}"
  if [ "$PRESET" != default ]; then name="${name}_${PRESET}"; fi
  dir="$RESULTS_DIR/$name"
  mkdir -p "$dir"
  echo "== $name: training (log: $dir/training.log)"
  "$PYTHON" blind_knowledge_dist_training.py "${common[@]}" --noise_type "$NOISE_TYPE" "$@" >> "$dir/training.log" \
    || fail "training of $name" $? "$dir/training.log and the error above"
  echo "== $name: learning (log: $dir/learning.log)"
  "$PYTHON" learning.py "${common[@]}" --noise_type "$NOISE_TYPE" > "$dir/learning.log" \
    || fail "learning.py for $name" $? "$dir/learning.log"
  cat "$dir/learning.log"
  echo "== $name: detection (log: $dir/detection.log)"
  "$PYTHON" detection.py "${common[@]}" --noise_type "$NOISE_TYPE" > "$dir/detection.log" \
    || fail "detection.py for $name" $? "$dir/detection.log"
  cat "$dir/detection.log"
  echo "== $name: outputs in $dir"
done
