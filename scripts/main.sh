#!/usr/bin/env bash
# The main job on the built-in default: CPU only, no downloads.
# Trains the 2-D mixture teacher, then samples it at 50 and 4 steps and reports the distance to the exact mixture.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/diffdistill train recipes/toy/teacher_gmm2d.yaml "$@"
.venv/bin/diffdistill sample runs/toy-teacher --n 4000 --steps 50
.venv/bin/diffdistill sample runs/toy-teacher --n 4000 --steps 4
echo "plots: runs/toy-teacher/samples/ and runs/toy-teacher/export/*.png"
