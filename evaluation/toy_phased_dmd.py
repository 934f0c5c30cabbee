"""Phased DMD vs DMD2 on the 2-D mixture with UNEQUAL mode weights (benchmark B3; arXiv:2510.27684's claim is
diversity): four-step students with 2 and with 4 phases beside DMD2's four-step student, at the same trainer steps,
student updates (one per 5 critic updates) and times, several seeds each.

    python evaluation/toy_phased_dmd.py                    # all rows, seeds 0 1 2
    python evaluation/toy_phased_dmd.py --rows phased_2 --seeds 0
    python evaluation/toy_phased_dmd.py --steps 8000 --runs runs/toy-phased-dmd-8k --name phased_dmd_vs_dmd2_8000steps

Rows: teacher (50 Euler steps, the reference), dmd2_4step (recipes/dmd2/toy_gmm2d_weighted_4step.yaml),
phased_2 / phased_4 (recipes/phased_dmd/toy_gmm2d_{2,4}phase.yaml). Every student starts from the same MLP teacher
(recipes/toy/teacher_gmm2d_weighted.yaml, trained first when missing). Scores: sliced W2 to the exact mixture, share of
modes covered, and the total-variation distance between the per-mode shares of the samples and the mode weights (the
floor: an exact draw of the same size). Writes <out>/<name>.json, .md and a scatter plot of seed 0's samples.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from toy_dmd2_ablation import markdown, score, summarise, train  # noqa: E402
from toy_export import load_toy_export  # noqa: E402

from diffdistill.inference.generate import generate  # noqa: E402
from diffdistill.inference.spec import SamplingSpec  # noqa: E402
from diffdistill.models.toy import mixture_means, mixture_weights  # noqa: E402

TEACHER = ("recipes/toy/teacher_gmm2d_weighted.yaml", Path("runs/toy-teacher-weighted"))
ROWS: dict[str, tuple[str, int]] = {         # row -> (recipe, phases; 0 for DMD2)
    "dmd2_4step": ("recipes/dmd2/toy_gmm2d_weighted_4step.yaml", 0),
    "phased_2": ("recipes/phased_dmd/toy_gmm2d_2phase.yaml", 2),
    "phased_4": ("recipes/phased_dmd/toy_gmm2d_4phase.yaml", 4),
}


def budget(row: str, steps: int | None) -> list[str]:
    """Overrides for a training budget of ``steps`` trainer steps (the phases split it evenly); none: the recipe's."""
    if steps is None:
        return []
    phases = ROWS[row][1]
    return [f"trainer.max_steps={steps}"] + ([f"method.phase_steps={steps // phases}"] if phases else [])
METRICS = ("sliced_w2", "modes_covered", "mode_weight_error")


def samples_of(run: Path, n: int):
    _, meta, model, mixture = load_toy_export(str(run))
    samples, _, _ = generate(model, SamplingSpec.from_dict(meta["sampling"], model.schedule), n, seed=0, progress=False)
    return samples, mixture


def plot(runs: dict[str, Path], n: int, path: Path) -> None:
    fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs), 3.4), squeeze=False)
    for ax, (row, run) in zip(axes[0], runs.items()):
        samples, mixture = samples_of(run, n)
        means, weights = mixture_means(mixture), mixture_weights(mixture)
        ax.scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.3)
        ax.scatter(means[:, 0], means[:, 1], s=600 * weights, facecolors="none", edgecolors="red")
        ax.set_title(row, fontsize=9)
        ax.set_xlim(-3, 3), ax.set_ylim(-3, 3), ax.set_aspect("equal"), ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle("seed 0 samples; red circles: modes, area = weight", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", default=["teacher", *ROWS], choices=["teacher", *ROWS])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--n", type=int, default=4000, help="samples per run for the scores")
    p.add_argument("--steps", type=int, default=None, help="trainer steps per run (default: the recipes' 2000)")
    p.add_argument("--runs", default="runs/toy-phased-dmd")
    p.add_argument("--name", default="phased_dmd_vs_dmd2")
    p.add_argument("--out", default="evaluation/results/toy/phased_dmd")
    args = p.parse_args()
    if not (TEACHER[1] / "export").is_dir():
        train(TEACHER[0], [])
    teacher_seconds = float(json.loads((TEACHER[1] / "export" / "diffdistill.json").read_text())["train_seconds"])
    summary, seed0 = [], {}
    for row in args.rows:
        runs = []
        for seed in args.seeds if row != "teacher" else [0]:
            if row == "teacher":
                run, seconds = TEACHER[1], teacher_seconds
            else:
                run = Path(args.runs) / f"{row}-s{seed}"
                seconds = train(ROWS[row][0], [*budget(row, args.steps), f"trainer.seed={seed}", f"output_dir={run}"])
            runs.append({"seed": seed, "seconds": seconds, **score(run, args.n)})
            seed0.setdefault(row, run)
            print(f"  {row} seed {seed}: " + ", ".join(f"{k} {runs[-1][k]:.3f}" for k in METRICS), flush=True)
        summary.append(summarise(row, runs, METRICS) | {"runs": runs})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps({"n": args.n, "steps": args.steps or 2000, "rows": summary},
                                                       indent=2))
    table = markdown(summary, args.n, METRICS, f"Phased DMD vs DMD2, four steps, unequal mode weights, "
                     f"{args.steps or 2000} trainer steps")
    (out / f"{args.name}.md").write_text(table)
    plot(seed0, args.n, out / f"{args.name}.png")
    print(table)


if __name__ == "__main__":
    main()
