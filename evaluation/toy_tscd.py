"""Hyper-SD on the analytic 2-D mixture (benchmark B3): ONE student sampled with TCD at 1, 2, 4 and 8 steps, after
TSCD (8-4-2-1 segments) and after the one-step enhancement, beside DMD2's one- and four-step students at the same
trainer steps (counting both Hyper-SD stages), several seeds each.

    python evaluation/toy_tscd.py                      # all rows, seeds 0 1 2
    python evaluation/toy_tscd.py --seeds 0 --eta 0.0

Rows: teacher (50 DDIM steps, the reference), tscd @k (recipes/tscd/toy_gmm2d.yaml, 2000 steps), tscd+one-step @k
(recipes/tscd/toy_gmm2d_one_step.yaml from that student, 2000 more), dmd2 1-step and 4-step
(recipes/dmd2/toy_gmm2d_4step.yaml, 4000 steps; the one-step row sets student_times [1.0]). Every student distils the
same MLP teacher (recipes/toy/teacher_gmm2d.yaml, trained first when missing). TCD samples at 2-8 steps use --eta (the
stochasticity; it does not act on one step). Scores: sliced W2 to the exact mixture (floor: two exact draws), share
of samples on a mode, share of modes covered; <out>/<name>.json, .md and a scatter plot of seed 0.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from toy_dmd2_ablation import markdown, summarise, train  # noqa: E402
from toy_export import load_toy_export  # noqa: E402

from diffdistill.inference.generate import generate  # noqa: E402
from diffdistill.inference.spec import SamplingSpec  # noqa: E402
from diffdistill.metrics.distribution import toy_report  # noqa: E402
from diffdistill.models.toy import mixture_means  # noqa: E402

TEACHER = ("recipes/toy/teacher_gmm2d.yaml", Path("runs/toy-teacher"))
TSCD = "recipes/tscd/toy_gmm2d.yaml"
ONE_STEP = "recipes/tscd/toy_gmm2d_one_step.yaml"
DMD2 = "recipes/dmd2/toy_gmm2d_4step.yaml"
STEPS = (1, 2, 4, 8)
METRICS = ("sliced_w2", "on_mode", "modes_covered")


def samples(run: Path, n: int, steps: int | None = None, eta: float | None = None):
    """The export's samples at its own setting, or on ``steps`` of its step grid (TCD's for the unified student)."""
    _, meta, model, mixture = load_toy_export(str(run))
    spec = SamplingSpec.from_dict(meta["sampling"], model.schedule).override(model.schedule, steps, eta=eta)
    return generate(model, spec, n, seed=0, progress=False)[0], mixture


def score(run: Path, n: int, steps: int | None = None, eta: float | None = None) -> dict[str, float]:
    return toy_report(*samples(run, n, steps, eta))


def train_seed(seed: int, runs: Path, budget: int) -> dict[str, tuple[Path, float]]:
    """Train the three students of one seed; returns row -> (run dir, cumulative training seconds)."""
    tscd, one_step = runs / f"tscd-s{seed}", runs / f"tscd-one-step-s{seed}"
    half = budget // 2
    t_tscd = train(TSCD, [f"trainer.max_steps={half}", f"method.stage_steps=[{half // 4},{half // 4},{half // 4}]",
                          f"trainer.seed={seed}", f"output_dir={tscd}"])
    t_one = train(ONE_STEP, [f"trainer.max_steps={half}", f"student.pretrained={tscd}", f"trainer.seed={seed}",
                             f"output_dir={one_step}"])
    out = {"tscd": (tscd, t_tscd), "tscd+one-step": (one_step, t_tscd + t_one)}
    for name, times in (("dmd2 1-step", "[1.0]"), ("dmd2 4-step", None)):
        run = runs / f"{name.replace(' ', '-')}-s{seed}"
        extra = [f"method.student_times={times}"] if times else []
        out[name] = (run, train(DMD2, [*extra, f"trainer.max_steps={budget}", f"trainer.seed={seed}",
                                       f"output_dir={run}"]))
    return out


def plot(seed0: dict[str, tuple[Path, int | None]], n: int, eta: float, path: Path) -> None:
    fig, axes = plt.subplots(1, len(seed0), figsize=(2.6 * len(seed0), 2.9), squeeze=False)
    for ax, (row, (run, steps)) in zip(axes[0], seed0.items()):
        x, mixture = samples(run, n, steps, eta if steps else None)
        means = mixture_means(mixture)
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.3)
        ax.scatter(means[:, 0], means[:, 1], s=40, facecolors="none", edgecolors="red")
        ax.set_title(row, fontsize=8)
        ax.set_xlim(-3, 3), ax.set_ylim(-3, 3), ax.set_aspect("equal"), ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--n", type=int, default=4000, help="samples per run and setting for the scores")
    p.add_argument("--budget", type=int, default=4000, help="trainer steps per method (Hyper-SD: both stages)")
    p.add_argument("--eta", type=float, default=0.3, help="TCD eta at 2-8 steps")
    p.add_argument("--runs", default="runs/toy-tscd-b3")
    p.add_argument("--name", default="tscd_vs_dmd2")
    p.add_argument("--out", default="evaluation/results/toy/tscd")
    args = p.parse_args()
    if not (TEACHER[1] / "export").is_dir():
        train(TEACHER[0], [])
    teacher_seconds = float(json.loads((TEACHER[1] / "export" / "diffdistill.json").read_text())["train_seconds"])
    rows: dict[str, list[dict]] = {"teacher @50": [{"seed": 0, "seconds": teacher_seconds,
                                                    **score(TEACHER[1], args.n, 50)}]}
    seed0: dict[str, tuple[Path, int | None]] = {"teacher @50": (TEACHER[1], 50)}
    for seed in args.seeds:
        for name, (run, seconds) in train_seed(seed, Path(args.runs), args.budget).items():
            settings = [(f"{name} @{k}", k) for k in STEPS] if name.startswith("tscd") else [(name, None)]
            for row, steps in settings:
                result = score(run, args.n, steps, args.eta if steps else None)
                rows.setdefault(row, []).append({"seed": seed, "seconds": seconds, **result})
                if seed == args.seeds[0] and (steps in (None, 1, 4)):
                    seed0[row] = (run, steps)
                print(f"  {row} seed {seed}: " + ", ".join(f"{k} {result[k]:.3f}" for k in METRICS), flush=True)
    summary = [summarise(row, runs, METRICS) | {"runs": runs} for row, runs in rows.items()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps({"n": args.n, "budget_steps": args.budget, "eta": args.eta,
                                                       "rows": summary}, indent=2))
    table = markdown(summary, args.n, METRICS, f"Hyper-SD (TSCD 8-4-2-1, then one-step enhancement) vs DMD2, "
                     f"{args.budget} trainer steps per method, TCD eta {args.eta}")
    (out / f"{args.name}.md").write_text(table)
    plot(seed0, args.n, args.eta, out / f"{args.name}.png")
    print(table)


if __name__ == "__main__":
    main()
