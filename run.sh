#!/usr/bin/env bash
# Train and evaluate BKD on CIFAR-N label sets: for each run, training, then learning.py and detection.py,
# with the logs in the run directory (training.log appended, learning.log, detection.log).
# By default the original's run.sh: seed 0, CIFAR-10N aggre, worst, rand1, one after another.
#
# Usage: bash run.sh [--quick] [--reference] [--grid challenge] [--parallel N | --slurm ...] [training flags ...]
#   --quick                 the CPU-sized preset (docs/results.md): minutes instead of hours
#   --reference             the authors' computation bit for bit (docs/reference-mode.md), in all three scripts
#   --grid challenge        seeds 0-4 x CIFAR-10N aggre, rand1, worst and CIFAR-100N noisy100
#   --parallel N, --per_gpu K, --slurm, ...   where the runs go (docs/grid.md; python -m launch run --help)
#   other flags             passed to blind_knowledge_dist_training.py (and, where they take them, the two evaluations)
# Environment (all optional): SEED=0 (or several: "0 1 2")  DATASET=cifar10  NOISE_TYPES="aggre worst rand1"
#   RESULTS_DIR=results  BKD_DATA_ROOT=~/data (CIFAR images)  NOISE_PATH=<CIFAR-N .pt file>  DEVICE=auto  PYTHON=python
# Launching again skips finished runs and continues unfinished ones; `python -m launch status` lists them.
set -euo pipefail
cd "$(dirname "$0")"

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

args=()
if [ -n "${SEED:-}" ]; then read -r -a seeds <<< "$SEED"; args+=(--seeds "${seeds[@]}"); fi
if [ -n "${DATASET:-}" ]; then args+=(--dataset "$DATASET"); fi
if [ -n "${NOISE_TYPES:-}" ]; then read -r -a types <<< "$NOISE_TYPES"; args+=(--noise_types "${types[@]}"); fi
if [ -n "${RESULTS_DIR:-}" ]; then args+=(--results_dir "$RESULTS_DIR"); fi
if [ -n "${NOISE_PATH:-}" ]; then args+=(--noise_path "$NOISE_PATH"); fi
if [ -n "${DEVICE:-}" ]; then args+=(--device "$DEVICE"); fi

status=0
"$PYTHON" -m launch run "${args[@]}" "$@" || status=$?
if [ "$status" != 0 ] && [ "$status" != 130 ]; then
  echo "run.sh: stopped with exit $status; the lines above name the problem (a failed run: its step and log)" >&2
fi
exit "$status"
