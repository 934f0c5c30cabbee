"""Benchmark B2 runner: sample an exported Moving Fashion-MNIST video model at several step counts and score it.

    python evaluation/video/bench.py diffdistill/assets/moving_fmnist/teacher --steps 1 2 4 8 16 32 50 --n 500

For each setting (Euler with CFG for teachers, through the sweep of diffdistill/eval/sweep.py): per-frame FID,
the temporal Fréchet distances over frame-difference features and over sprite tracks, class accuracy and consistency
(diffdistill/metrics/video.py), NFE, frames/s and its ratio to the setting with the most steps (measured first, in
the same run), a frame strip PNG and an animated GIF. Writes <out>/<name>.json, <name>.md, <name>_scores.png,
<name>_<steps>steps.png and <name>_<steps>steps.gif.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from diffdistill.data import FMNIST_CLASSES
from diffdistill.eval.sweep import step_sweep, sweep_header
from diffdistill.inference.spec import SAMPLERS
from diffdistill.metrics.video import VideoEvaluator
from diffdistill.models.registry import find_export, load_model, read_export_meta
from diffdistill.visual import save_samples, save_video

COLUMNS = [("fid_frames", "per-frame FID", ".2f"), ("fd_motion", "FD motion", ".2f"), ("fd_track", "FD track", ".3f"),
           ("class_accuracy", "class accuracy", ".3f"), ("consistency", "consistency", ".3f"),
           ("mean_speed", "speed px/frame", ".2f")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="an exported video model folder (or a run dir with export/)")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 50])
    p.add_argument("--n", type=int, default=500, help="clips per setting")
    p.add_argument("--guidance", type=float, default=3.0, help="standard-form CFG scale")
    p.add_argument("--sampler", choices=SAMPLERS, default="ode")
    p.add_argument("--spacing", default="trailing")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="teacher")
    p.add_argument("--out", default="evaluation/results/video")
    args = p.parse_args()
    directory = find_export(args.model)
    model = load_model(directory).eval()
    if len(model.data_shape) != 4:
        raise SystemExit(f"{directory} is not a video model (samples of shape {list(model.data_shape)}); "
                         "benchmark image models with evaluation/fmnist/bench.py")
    evaluator = VideoEvaluator()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    real = evaluator.card
    header = {**sweep_header(str(directory), read_export_meta(directory).get("trained_steps"), args.n, args.guidance,
                             args.sampler, args.spacing, args.seed),
              "evaluator": {k: real.get(k) for k in ("frame_accuracy", "clip_accuracy", "reference_clips", "clip")}}

    def after(steps: int, clips: torch.Tensor, labels: torch.Tensor, rows: list[dict]) -> None:
        names = list(FMNIST_CLASSES)
        save_samples(clips, out / f"{args.name}_{steps:02d}steps.png", labels=labels, class_names=names, per_class=1)
        save_video(clips[:20], out / f"{args.name}_{steps:02d}steps.gif", labels=labels[:20], class_names=names)
        write(out, args.name, {**header, "rows": rows}, max(args.steps))

    step_sweep(model, args.steps, args.n, guidance=args.guidance, sampler=args.sampler, spacing=args.spacing,
               batch=args.batch, seed=args.seed, score=lambda x, y: evaluator.score(x, y).as_dict(), after=after,
               unit="frames")


def write(out: Path, name: str, result: dict, reference: int) -> None:
    rows = result["rows"]
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    lines = [f"{name}: {result['sampler']} sampler, CFG {result['guidance']} (standard form), N = {result['n']} clips, "
             f"frames/s ratio vs the {reference}-step setting measured in the same run", "",
             "| steps | NFE | " + " | ".join(c[1] for c in COLUMNS) + " | frames/s ratio |",
             "|---:" * (len(COLUMNS) + 3) + "|"]
    lines += [f"| {r['steps']} | {r['nfe']} | " + " | ".join(format(r[key], fmt) for key, _, fmt in COLUMNS)
              + f" | {r['speed_ratio_vs_reference']:.1f}x |" for r in rows]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / f"{name}_scores.png", name)
    print("\n".join(lines))


def plot(rows: list[dict], path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5), dpi=100)
    steps = [r["steps"] for r in rows]
    for ax, (key, label) in zip(axes, [("fid_frames", "per-frame FID"), ("fd_motion", "FD motion"),
                                       ("class_accuracy", "class accuracy")]):
        ax.plot(steps, [r[key] for r in rows], "o-")
        ax.set_xscale("log")
        if key != "class_accuracy":
            ax.set_yscale("log")
        ax.set_xlabel("sampling steps")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"{name}: scores against steps")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
