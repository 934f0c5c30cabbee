"""Benchmark B1 runner: sample an exported Fashion-MNIST model at several step counts and score it.

    python evaluation/fmnist/bench.py diffdistill/assets/fmnist/teacher --steps 1 2 4 8 16 32 50 --n 10000

For each setting: FID-FMNIST against the 10k test images, class accuracy, within-class diversity (metrics/fmnist.py),
NFE, images/s and its ratio to the reference setting (the most steps; measured first, in the same run), and a PNG grid
(one row per class). Writes <out>/<name>.json, <name>.md, <name>_fid.png and <name>_<steps>steps.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from diffdistill.data import FMNIST_CLASSES
from diffdistill.metrics.fmnist import ASSETS, FMNISTEvaluator
from diffdistill.models.registry import find_export, load_model, read_export_meta
from diffdistill.eval.sweep import step_sweep, sweep_header
from diffdistill.inference.spec import SAMPLERS
from diffdistill.visual import save_samples


def save_class_grid(images: torch.Tensor, labels: torch.Tensor, path: Path) -> None:
    """A row per class (the first 10 samples of each), the class names on the left: the toolkit's one grid layout."""
    save_samples(images, path, labels=labels, class_names=list(FMNIST_CLASSES))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="an exported model folder (or a run dir with export/)")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 50])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--guidance", type=float, default=3.0, help="standard-form CFG scale")
    p.add_argument("--sampler", choices=SAMPLERS, default="ode")
    p.add_argument("--spacing", default="trailing")
    # 100, not 500: on 2 CPU cores a batch of 500 sampled ~2.3x slower (system time on large activations); sample i
    # does not depend on the batch (diffdistill/inference/noise.py), so scores do not change
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="teacher")
    p.add_argument("--out", default="evaluation/results/fmnist")
    args = p.parse_args()
    directory = find_export(args.model)
    model = load_model(directory).eval()
    evaluator = FMNISTEvaluator()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    card = json.loads((ASSETS / "card.json").read_text()) if (ASSETS / "card.json").is_file() else {}
    header = {**sweep_header(str(directory), read_export_meta(directory).get("trained_steps"), args.n, args.guidance,
                             args.sampler, args.spacing, args.seed),
              "evaluator_test_accuracy": card.get("test_accuracy")}

    def after(steps: int, images: torch.Tensor, labels: torch.Tensor, rows: list[dict]) -> None:
        save_class_grid(images, labels, out / f"{args.name}_{steps:02d}steps.png")
        write(out, args.name, {**header, "rows": rows}, max(args.steps))

    step_sweep(model, args.steps, args.n, guidance=args.guidance, sampler=args.sampler, spacing=args.spacing,
               batch=args.batch, seed=args.seed, score=lambda x, y: evaluator.score(x, y).as_dict(), after=after)


def write(out: Path, name: str, result: dict, reference: int) -> None:
    rows = result["rows"]
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    lines = [f"{name}: {result['sampler']} sampler, CFG {result['guidance']} (standard form), N = {result['n']}, "
             f"speed ratio vs the {reference}-step setting measured in the same run", "",
             "| steps | NFE | FID-FMNIST | class accuracy | diversity | images/s ratio |", "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['steps']} | {r['nfe']} | {r['fid_fmnist']:.2f} | {r['class_accuracy']:.3f} | {r['diversity']:.2f} | "
              f"{r['speed_ratio_vs_reference']:.1f}x |" for r in rows]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / f"{name}_fid.png", name)
    print("\n".join(lines))


def plot(rows: list[dict], path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ax.plot([r["steps"] for r in rows], [r["fid_fmnist"] for r in rows], "o-")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("FID-FMNIST")
    ax.set_title(f"{name}: FID against steps")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
