"""DMD2's ablations on the analytic 2-D mixture (benchmark B3), several seeds each: what the GAN term, the two
time-scale rule and backward simulation change where a run takes seconds. The same one-change rows as B1's table
(evaluation/fmnist/dmd2_table.py), which needs hours per row on a CPU.

    python evaluation/toy_dmd2_ablation.py                   # all rows, seeds 0 1 2
    python evaluation/toy_dmd2_ablation.py --rows 4step no_backsim --seeds 0

Rows (recipe + overrides):
  1step          recipes/dmd2/toy_gmm2d.yaml: one step, MLP student and critic, the exact mixture as teacher
  1step_gan      + the GAN head on the critic's features (B1's weights: student 5e-3, critic 1e-2)
  1step_ratio1   one critic update per student update (no two time-scale rule)
  4step          recipes/dmd2/toy_gmm2d_4step.yaml: four steps, student and critic copies of the trained MLP teacher
  4step_gan      + the GAN head
  4step_ratio1   one critic update per student update
  no_backsim     4step fed noised real data at steps k > 0 instead of its own rollout
Every run trains in <runs>/<row>-s<seed>/; the 4-step rows need the MLP teacher (runs/toy-teacher; trained first
when missing). Scores: sliced W2 to the exact mixture (and the floor of two exact draws), share of samples on a
mode, share of modes covered; mean and spread over seeds in <out>/<name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from toy_export import load_toy_export

from diffdistill.inference.generate import generate
from diffdistill.inference.spec import SamplingSpec
from diffdistill.metrics.distribution import toy_report

GAN = ["method.gan_student_weight=0.005", "method.gan_critic_weight=0.01"]
ROWS: dict[str, tuple[str, list[str]]] = {
    "1step": ("recipes/dmd2/toy_gmm2d.yaml", []),
    "1step_gan": ("recipes/dmd2/toy_gmm2d.yaml", GAN),
    "1step_ratio1": ("recipes/dmd2/toy_gmm2d.yaml", ["method.student_every=1"]),
    "4step": ("recipes/dmd2/toy_gmm2d_4step.yaml", []),
    "4step_gan": ("recipes/dmd2/toy_gmm2d_4step.yaml", GAN),
    "4step_ratio1": ("recipes/dmd2/toy_gmm2d_4step.yaml", ["method.student_every=1"]),
    "no_backsim": ("recipes/dmd2/toy_gmm2d_4step.yaml", ["method.backward_simulation=false"]),
}
METRICS = ("sliced_w2", "on_mode", "modes_covered")
TEACHER = ("recipes/toy/teacher_gmm2d.yaml", Path("runs/toy-teacher"))


def train(recipe: str, overrides: list[str]) -> float:
    """Run `diffdistill train` and return its wall time in seconds."""
    command = [sys.executable, "-m", "diffdistill.cli", "train", recipe, *overrides]
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def score(run: Path, n: int) -> dict[str, float]:
    """Samples of the run's export on its own few-step schedule, measured against the exact mixture."""
    _, meta, model, mixture = load_toy_export(str(run))
    plan = SamplingSpec.from_dict(meta["sampling"], model.schedule)
    samples, _, _ = generate(model, plan, n, seed=0, progress=False)
    return toy_report(samples, mixture)


LABELS = {"sliced_w2": "sliced W2 (floor)", "on_mode": "on-mode", "modes_covered": "modes covered",
          "mode_weight_error": "mode-weight TV (floor)"}


def summarise(row: str, runs: list[dict], metrics: tuple[str, ...] = METRICS) -> dict:
    """Mean and [min, max] over seeds of each metric (and of its exact-draw floor where it has one)."""
    out = {"row": row, "seeds": [r["seed"] for r in runs], "train_seconds": round(statistics.mean(r["seconds"] for r in runs), 1)}
    for key in metrics:
        values = [r[key] for r in runs]
        out[key] = round(statistics.mean(values), 3)
        out[f"{key}_range"] = [round(min(values), 3), round(max(values), 3)]
        if f"{key}_floor" in runs[0]:
            out[f"{key}_floor"] = round(statistics.mean(r[f"{key}_floor"] for r in runs), 3)
    return out


def markdown(rows: list[dict], n: int, metrics: tuple[str, ...] = METRICS,
             title: str = "DMD2 ablations on the 2-D mixture") -> str:
    lines = [f"{title}: N = {n} samples per run, mean over seeds [min, max]", "",
             "| row | seeds | " + " | ".join(LABELS[k] for k in metrics) + " | train time |",
             "|---|---:|" + "---:|" * len(metrics) + "---:|"]
    for r in rows:
        cells = [f"{r[k]:.3f} [{r[k + '_range'][0]:.3f}, {r[k + '_range'][1]:.3f}]"
                 + (f" ({r[k + '_floor']:.3f})" if k + "_floor" in r else "") for k in metrics]
        lines.append(f"| {r['row']} | {len(r['seeds'])} | " + " | ".join(cells) + f" | {r['train_seconds']:.0f} s |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--n", type=int, default=2000, help="samples per run for the scores")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: each recipe's own)")
    p.add_argument("--runs", default="runs/toy-dmd2-ablation")
    p.add_argument("--name", default="dmd2_ablation")
    p.add_argument("--out", default="evaluation/results/toy/ablation")
    args = p.parse_args()
    if any(ROWS[row][0].endswith("_4step.yaml") for row in args.rows) and not (TEACHER[1] / "export").is_dir():
        train(TEACHER[0], [])
    extra = [f"trainer.max_steps={args.steps}"] if args.steps else []
    summary = []
    for row in args.rows:
        recipe, overrides = ROWS[row]
        runs = []
        for seed in args.seeds:
            run = Path(args.runs) / f"{row}-s{seed}"
            seconds = train(recipe, [*overrides, *extra, f"trainer.seed={seed}", f"output_dir={run}"])
            runs.append({"seed": seed, "seconds": seconds, **score(run, args.n)})
            print(f"  {row} seed {seed}: " + ", ".join(f"{k} {runs[-1][k]:.3f}" for k in METRICS), flush=True)
        summary.append(summarise(row, runs) | {"runs": runs})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps({"n": args.n, "steps": args.steps, "rows": summary}, indent=2))
    table = markdown(summary, args.n)
    (out / f"{args.name}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
