"""An animated GIF of a video model at several step counts side by side: a row per class, a column per setting, every
clip from the same seed (so the columns differ only by the number of steps).

    python evaluation/video/steps_gif.py diffdistill/assets/moving_fmnist/teacher --steps 1 4 50 \\
        --out evaluation/results/video/teacher_1_4_50steps.gif

Samples through the one sampling path (diffdistill/inference/generate.py; Euler with CFG for a teacher).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from diffdistill.data import FMNIST_CLASSES
from diffdistill.inference.generate import export_spec, generate
from diffdistill.models.registry import find_export, load_model
from diffdistill.visual import save_video_rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="an exported video model folder (or a run dir with export/)")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 4, 50])
    p.add_argument("--guidance", type=float, default=None, help="standard-form CFG (default: the export's)")
    p.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=float, default=4.0)
    p.add_argument("--out", default="evaluation/results/video/teacher_steps.gif")
    args = p.parse_args()
    directory = find_export(args.model)
    model = load_model(directory).eval()
    labels = torch.tensor(args.classes)
    columns = []
    for steps in args.steps:
        spec = export_spec(directory, model, steps=steps, guidance=args.guidance)
        clips, _, _ = generate(model, spec, len(labels), args.seed, batch_size=len(labels), labels=labels,
                               progress=False)
        columns.append(clips.clamp(-1, 1))
    rows = [torch.stack([column[i] for column in columns]) for i in range(len(labels))]
    names = [f"{FMNIST_CLASSES[c]}" for c in args.classes]
    written = save_video_rows(rows, names, Path(args.out), fps=args.fps)
    print(f"columns: {args.steps} steps; wrote {', '.join(map(str, written))}")


if __name__ == "__main__":
    main()
