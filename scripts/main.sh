#!/usr/bin/env bash
# The main job on the built-in default: CPU only, no downloads beyond PyPI and Debian's Fashion-MNIST package.
# Distils the shipped Fashion-MNIST teacher (diffusers UNet2DConditionModel, 50-step DDIM + CFG) into a one-step
# generator with DMD2 on a short schedule, then scores the student (FID-FMNIST, class accuracy, diversity) and writes
# its sample grid. Extra args are recipe overrides, e.g. trainer.max_steps=1000.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh diffusers
bash scripts/get_fmnist.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
run=runs/dmd2-fmnist-quick
.venv/bin/diffdistill train recipes/dmd2/fmnist_1step_quick.yaml "$@"
.venv/bin/python evaluation/fmnist/compare.py --teacher-steps 0 --student "dmd2-1step=$run" --n 1000 \
    --name scores --out "$run/eval"
echo "student samples (one row per class): $run/eval/scores_dmd2-1step.png; training previews: $run/samples/"
echo "the teacher's step curve to compare with: evaluation/results/fmnist/teacher.md"
