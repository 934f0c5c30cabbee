#!/usr/bin/env bash
# Benchmark B2, the self-forcing ablations of Self Forcing's Table 3 (Huang et al., arXiv:2506.08009) at equal
# training budget, scored in ONE run beside the teacher and the baseline they ablate: self forcing for 2400 s from
# the ODE-regression initialisation (runs/video-self-forcing-4step-2400s, trained by evaluation/video/asd_b2.sh).
#   no ODE initialisation: the student starts as a block-causal copy of the teacher and gets the ODE stage's time
#     too (pairs 1320 s + regression 1110 s, docs/results.md), 4830 s in all;
#   teacher forcing (CausVid-style: the real clip is the cache's context, `method.rollout=teacher_forcing`), 2400 s;
#   no gradient truncation (gradients through every denoising step, `method.truncate=false`), 2400 s; its time per
#     step and peak memory against the baseline's come from the runs' metrics.jsonl (`peak_mem_mb`) and, timed side by
#     side in one run, evaluation/video/step_time.py.
# Run alone on the machine (the budgets are wall time); each train command resumes from its checkpoints when rerun.
# Usage: bash evaluation/video/self_forcing_ablations.sh [train|score|all]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
dd=.venv/bin/diffdistill
long="trainer.max_steps=100000"          # the time budget decides, not the step cap
if [[ $what == train || $what == all ]]; then
  # the baseline exactly as asd_b2.sh trains it (when that run is finished this only writes its export again)
  $dd train recipes/video/self_forcing.yaml trainer.max_seconds=2400 trainer.max_steps=5000 \
      output_dir=runs/video-self-forcing-4step-2400s
  $dd train recipes/video/self_forcing_no_ode_init.yaml trainer.max_seconds=4830 $long \
      output_dir=runs/video-sf-no-ode-init
  $dd train recipes/video/self_forcing.yaml method.rollout=teacher_forcing trainer.max_seconds=2400 $long \
      output_dir=runs/video-sf-teacher-forcing
  $dd train recipes/video/self_forcing.yaml method.truncate=false trainer.max_seconds=2400 $long \
      output_dir=runs/video-sf-no-truncation
fi
if [[ $what == score || $what == all ]]; then
  .venv/bin/python evaluation/video/compare.py --student sf-4step=runs/video-self-forcing-4step-2400s@4+0 \
      --student no-ode-init=runs/video-sf-no-ode-init@4+0 --student teacher-forcing=runs/video-sf-teacher-forcing@4+0 \
      --student no-truncation=runs/video-sf-no-truncation@4+0 --n 200 --name self_forcing_ablations \
      --out evaluation/results/video/self_forcing_ablations
  .venv/bin/python evaluation/video/train_cost.py runs/video-self-forcing-4step-2400s runs/video-sf-no-ode-init \
      runs/video-sf-teacher-forcing runs/video-sf-no-truncation \
      --out evaluation/results/video/self_forcing_ablations/train_cost.md
  # seconds per step of each variant side by side in this one run (the runs above trained in different sessions,
  # whose machines need not run at the same speed); 20 steps = 4 cycles of the student's update every 5 steps
  .venv/bin/python evaluation/video/step_time.py --recipe recipes/video/self_forcing.yaml --steps 20 \
      --variant "self-forcing=" --variant "teacher-forcing=method.rollout=teacher_forcing" \
      --variant "no-truncation=method.truncate=false" --out evaluation/results/video/self_forcing_ablations/step_time.json
fi
