#!/usr/bin/env bash
# Benchmark B2 for adversarial self-distillation (issue "ASD + first-frame enhancement"): every run from the same
# ODE-regression initialisation (recipes/video/ode_init.yaml) and for the same CPU time (trainer.max_seconds 2400 in
# each recipe; run them alone on the machine; the two ablations: ASD's step count, see below), then ONE scoring run
# of every student at 1, 2 and 4 steps per chunk (a 4-step student without a ladder at fewer steps: the evenly
# spaced subset of its times), with and without first-frame enhancement (+0: none), beside the teacher:
#   self forcing trained for 1, 2 and 4 steps on its own (ASD's "Self Forcing†" baselines; the 4-step one is also
#   "without ASD" at every step count), ASD (Self Forcing's GAN weights 1e-2, ladder 1-2-3-4), and the ablations of
#   its open choices: the adversarial weight (1e-1) and the step pairs (ladder 1-2-4).
# Each train command resumes from its checkpoints when rerun (a killed session loses at most 100 steps).
# Usage: bash evaluation/video/asd_b2.sh [train|score|all]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
dd=.venv/bin/diffdistill
if [[ $what == train || $what == all ]]; then
  $dd train recipes/video/self_forcing_1step.yaml
  $dd train recipes/video/self_forcing_2step.yaml
  $dd train recipes/video/asd.yaml
  $dd train recipes/video/self_forcing.yaml trainer.max_seconds=2400 trainer.max_steps=5000 \
      output_dir=runs/video-self-forcing-4step-2400s
  # the ablations get ASD's STEP count (603 in its 2400 s), not its wall time: they trained in a later session on a
  # machine running ~1.7x slower, where 2400 s bought ~370 steps (evaluation/results/video/asd_b2/step_time.json
  # times all three side by side)
  $dd train recipes/video/asd.yaml method.asd_student_weight=0.1 method.asd_critic_weight=0.1 \
      trainer.max_steps=603 trainer.max_seconds=100000 output_dir=runs/video-asd-w0.1
  $dd train recipes/video/asd.yaml "method.ladder=[[1.0],[1.0,0.75],[1.0,0.9,0.75,0.5]]" \
      trainer.max_steps=603 trainer.max_seconds=100000 output_dir=runs/video-asd-ladder124
fi
if [[ $what == score || $what == all ]]; then
  rows=()
  for name in sf-1step=runs/video-self-forcing-1step sf-2step=runs/video-self-forcing-2step; do rows+=(--student "$name"); done
  for run in self-forcing-4step-2400s:sf-4step asd:asd asd-w0.1:asd-w0.1 asd-ladder124:asd-124; do
    dir=runs/video-${run%%:*} label=${run##*:}
    for setting in 1+0 1+2 1+4 2+0 2+4 4+0; do rows+=(--student "$label@${setting%+0}=$dir@$setting"); done
  done
  .venv/bin/python evaluation/video/compare.py "${rows[@]}" --n 200 --name asd_b2 --out evaluation/results/video/asd_b2
  .venv/bin/python evaluation/video/train_cost.py runs/video-self-forcing-1step runs/video-self-forcing-2step \
      runs/video-self-forcing-4step-2400s runs/video-asd runs/video-asd-w0.1 runs/video-asd-ladder124 \
      --out evaluation/results/video/asd_b2/train_cost.md
  # seconds per step of ASD and its two ablations side by side in this one run (the runs trained in different
  # sessions, whose machines need not run at the same speed); 20 steps = 4 cycles of the student's update every 5
  # steps, each step drawing its own rung
  .venv/bin/python evaluation/video/step_time.py --recipe recipes/video/asd.yaml --steps 20 --variant "asd=" \
      --variant "asd-w0.1=method.asd_student_weight=0.1 method.asd_critic_weight=0.1" \
      --variant "asd-124=method.ladder=[[1.0],[1.0,0.75],[1.0,0.9,0.75,0.5]]" \
      --out evaluation/results/video/asd_b2/step_time.json
fi
