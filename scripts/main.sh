#!/usr/bin/env bash
# The main job on the built-in default: CPU only, no downloads beyond PyPI and Debian's Fashion-MNIST package.
# Distils the shipped Fashion-MNIST teacher (diffusers UNet2DConditionModel, 50-step DDIM + CFG) into a one-step
# generator with DMD2 on a short schedule, then scores the student (FID-FMNIST, class accuracy, diversity) and writes
# its sample grid. Extra args are recipe overrides, e.g. trainer.max_steps=1000 output_dir=runs/mine.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "==> 1/4 setting up .venv (CPU torch 2.13.0 pinned, diffusers; pip is quiet, about a minute the first time)"
bash scripts/setup.sh diffusers
echo "==> 2/4 Fashion-MNIST: Debian's dataset-fashion-mnist package (installed with apt-get when missing and root)"
bash scripts/get_fmnist.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
recipe=recipes/dmd2/fmnist_1step_quick.yaml
# the run folder the overrides give (output_dir=...), read from the resolved recipe: the scores follow the run
run=$(.venv/bin/diffdistill validate "$recipe" "$@" 2>/dev/null | .venv/bin/python -c \
      'import json, sys; print(json.load(sys.stdin)["output_dir"])') || { .venv/bin/diffdistill validate "$recipe" "$@"; exit 2; }
echo "==> 3/4 training: $recipe -> $run"
.venv/bin/diffdistill train "$recipe" "$@"
echo "==> 4/4 scoring 1000 student samples with the benchmark's evaluator"
.venv/bin/python evaluation/fmnist/compare.py --teacher-steps 0 --student "dmd2-1step=$run" --n 1000 \
    --name scores --out "$run/eval"
echo "scores: $run/eval/scores.md (and scores.json)"
echo "student samples (a row per class): $run/eval/scores_dmd2-1step.png; training previews: $run/samples/"
echo "the teacher's step curve to compare with: evaluation/results/fmnist/teacher.md"
echo "next: the diffdistill command is .venv/bin/diffdistill (or run 'source .venv/bin/activate' first)"
