"""Benchmark B1's whole DMD2 table in one command: train (or resume) each row's run, then score every row against the
teacher in one compare.py run. Meant for a GPU (each row is thousands of steps); runs anywhere.

    python evaluation/fmnist/dmd2_table.py                               # all rows, the shipped schedules
    python evaluation/fmnist/dmd2_table.py --rows 1step no_gan --steps 2000 --n 1000 --name short

Rows (the shipped students' schedules; an ablation makes its one change in every stage of its base row):
  1step        recipes/dmd2/fmnist_1step.yaml 4500 steps, then recipes/dmd2/fmnist_1step_stage2.yaml 1000 steps
  4step        recipes/dmd2/fmnist_4step.yaml 1250 steps, then recipes/dmd2/fmnist_4step_stage2.yaml 750 steps (ratio 1)
  no_gan       1step without the GAN head and terms (gan weights 0)
  ratio1       1step with one critic update per student update (student_every 1, no two time-scale rule; the same
               trainer steps, so the same critic updates and five times the student updates)
  no_backsim   4step fed noised real data at steps k > 0 instead of its own rollout (backward simulation off;
               a one-step student has no later steps, so this ablation only exists for the multi-step one)
Stage k of a row trains in runs/b1-<row>/stage<k>/, started from stage k-1's last checkpoint (trainer.init_from); a
killed table resumes every stage from its last checkpoint. The scores (whole-lineage steps and wall time) go to
<out>/<name>.json and .md through compare.py.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ONE_STEP = [("recipes/dmd2/fmnist_1step.yaml", 4500), ("recipes/dmd2/fmnist_1step_stage2.yaml", 1000)]
FOUR_STEP = [("recipes/dmd2/fmnist_4step.yaml", 1250), ("recipes/dmd2/fmnist_4step_stage2.yaml", 750)]
ROWS: dict[str, tuple[list[tuple[str, int]], list[str]]] = {
    "1step": (ONE_STEP, []),
    "4step": (FOUR_STEP, []),
    "no_gan": (ONE_STEP, ["method.gan_student_weight=0", "method.gan_critic_weight=0"]),
    "ratio1": (ONE_STEP, ["method.student_every=1"]),
    "no_backsim": (FOUR_STEP, ["method.backward_simulation=false"]),
}
HERE = Path(__file__).resolve().parent


def stage_dir(row: str, stage: int, runs: Path) -> Path:
    return runs / f"b1-{row}" / f"stage{stage}"


def train_commands(row: str, steps: int | None, runs: Path) -> list[list[str]]:
    """One ``diffdistill train`` per stage of ``row``; ``steps`` replaces every stage's step count (short tests)."""
    stages, overrides = ROWS[row]
    commands = []
    for k, (recipe, stage_steps) in enumerate(stages, start=1):
        start = [f"trainer.init_from={stage_dir(row, k - 1, runs)}"] if k > 1 else []
        commands.append([sys.executable, "-m", "diffdistill.cli", "train", recipe, *overrides, *start,
                         f"trainer.max_steps={steps or stage_steps}", f"output_dir={stage_dir(row, k, runs)}"])
    return commands


def final_stage(row: str, runs: Path) -> Path:
    return stage_dir(row, len(ROWS[row][0]), runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--steps", type=int, default=None,
                   help="training steps per stage (default: the shipped students' schedules above)")
    p.add_argument("--runs", default="runs", help="where the rows' run folders go")
    p.add_argument("--n", type=int, default=10_000, help="samples per row for the scores")
    p.add_argument("--teacher-steps", type=int, default=50)
    p.add_argument("--name", default="dmd2_table")
    p.add_argument("--out", default="evaluation/results/fmnist/dmd2_table")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = p.parse_args()
    runs = Path(args.runs)
    commands = [command for row in args.rows for command in train_commands(row, args.steps, runs)]
    score = [sys.executable, str(HERE / "compare.py"), "--teacher-steps", str(args.teacher_steps), "--n", str(args.n),
             "--name", args.name, "--out", args.out,
             *[arg for row in args.rows for arg in ("--student", f"{row}={final_stage(row, runs)}")]]
    for command in [*commands, score]:
        print("$", " ".join(command), flush=True)
        if not args.dry_run:
            subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
