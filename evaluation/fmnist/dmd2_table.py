"""Benchmark B1's whole DMD2 table in one command: train (or resume) each row's run, then score every row against the
teacher in one compare.py run. Meant for a GPU (each row is thousands of steps); runs anywhere.

    python evaluation/fmnist/dmd2_table.py                               # all rows, the recipes' own step counts
    python evaluation/fmnist/dmd2_table.py --rows 1step no_gan --steps 2000 --n 1000 --name short

Rows (recipe + overrides; the ablations change one thing each):
  1step        recipes/dmd2/fmnist_1step.yaml
  4step        recipes/dmd2/fmnist_4step.yaml
  no_gan       1step without the GAN head and terms (gan weights 0)
  ratio1       1step with one critic update per student update (student_every 1, no two time-scale rule)
  no_backsim   4step fed noised real data at steps k > 0 instead of its own rollout (backward simulation off;
               a one-step student has no later steps, so this ablation only exists for the multi-step one)
Each row trains in runs/b1-<row>/ (a killed table resumes every row from its last checkpoint); the scores go to
<out>/<name>.json and .md through compare.py.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROWS: dict[str, tuple[str, list[str]]] = {
    "1step": ("recipes/dmd2/fmnist_1step.yaml", []),
    "4step": ("recipes/dmd2/fmnist_4step.yaml", []),
    "no_gan": ("recipes/dmd2/fmnist_1step.yaml", ["method.gan_student_weight=0", "method.gan_critic_weight=0"]),
    "ratio1": ("recipes/dmd2/fmnist_1step.yaml", ["method.student_every=1"]),
    "no_backsim": ("recipes/dmd2/fmnist_4step.yaml", ["method.backward_simulation=false"]),
}
HERE = Path(__file__).resolve().parent


def train_command(row: str, steps: int | None, runs: Path) -> list[str]:
    recipe, overrides = ROWS[row]
    extra = [f"trainer.max_steps={steps}"] if steps else []
    return [sys.executable, "-m", "diffdistill.cli", "train", recipe, *overrides, *extra, f"output_dir={runs / f'b1-{row}'}"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--steps", type=int, default=None, help="training steps per row (default: each recipe's own)")
    p.add_argument("--runs", default="runs", help="where the rows' run folders go")
    p.add_argument("--n", type=int, default=10_000, help="samples per row for the scores")
    p.add_argument("--teacher-steps", type=int, default=50)
    p.add_argument("--name", default="dmd2_table")
    p.add_argument("--out", default="evaluation/results/fmnist/dmd2_table")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = p.parse_args()
    runs = Path(args.runs)
    commands = [train_command(row, args.steps, runs) for row in args.rows]
    score = [sys.executable, str(HERE / "compare.py"), "--teacher-steps", str(args.teacher_steps), "--n", str(args.n),
             "--name", args.name, "--out", args.out,
             *[arg for row in args.rows for arg in ("--student", f"{row}={runs / f'b1-{row}'}")]]
    for command in [*commands, score]:
        print("$", " ".join(command), flush=True)
        if not args.dry_run:
            subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
