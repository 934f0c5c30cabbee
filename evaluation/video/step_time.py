"""Seconds per training step of variants of one recipe, timed in ONE run on this machine.

    python evaluation/video/step_time.py --out evaluation/results/video/teacher_candidates.json
    python evaluation/video/step_time.py --recipe recipes/video/self_forcing.yaml \
        --variant baseline= --variant "no-truncation=method.truncate=false" --steps 20 --out OUT.json

Each variant is the recipe with its overrides (space-separated), built with every role the recipe names and stepped
through the real trainer (``prepare_training`` + ``train_step``: every phase's forward, backward, AdamW, EMA); one
warm-up step, then ``--steps`` timed steps. ``seconds_per_step`` is their MEAN, because multi-role methods alternate
step kinds (self forcing updates the student on one step in ``student_every``): give a multiple of that cycle.
The default variants are the B2 video-teacher candidates (that committed JSON reports the median of 3 steps, written
before the mean; a one-phase method's steps are alike, so the two agree closely). Run it with nothing else on the
CPU: times compare only within one quiet run, which is why ablations that trained in different sessions are timed
here side by side.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from diffdistill.data import open_stream
from diffdistill.methods import build_method
from diffdistill.models.registry import count_parameters
from diffdistill.train.recipe import build_networks, resolve_run
from diffdistill.train.trainer import make_accelerator, prepare_training, train_step

TEACHER_RECIPE = "recipes/video/teacher.yaml"
TEACHER_CANDIDATES = {
    "patch 1x4x4, 4 layers, 8 frames": [],
    "patch 1x2x2, 4 layers, 8 frames": ["model.config.patch_size=[1,2,2]"],
    "patch 1x4x4, 6 layers, 12 frames": ["model.config.num_layers=6", "model.num_frames=12", "data.frames=12"],
}


def time_variant(recipe: str, overrides: list[str], steps: int) -> dict:
    """Build the recipe with ``overrides`` and time ``steps`` training steps after one warm-up step."""
    run = resolve_run(recipe, [*overrides, "trainer.cpu=true"])
    torch.manual_seed(0)
    models = build_networks(run)
    model = models["model"]
    method = build_method(run.method, models, run.data.config.num_classes)
    data = open_stream(run.data, run.trainer.batch_size, 0, 0)
    with tempfile.TemporaryDirectory() as tmp:
        accelerator = make_accelerator(run.trainer, Path(tmp))
        session = prepare_training(method, run.trainer, accelerator)
        seconds = []
        for step in range(steps + 1):
            start = time.perf_counter()
            train_step(method, session, data, step, run.trainer, accelerator, Path(tmp))
            seconds.append(time.perf_counter() - start)
    timed = seconds[1:]
    row = {"overrides": overrides, "parameters": count_parameters(model), "batch_size": run.trainer.batch_size,
           "steps_timed": steps, "seconds_per_step": round(statistics.fmean(timed), 3),
           "median_seconds": round(statistics.median(timed), 3)}
    if run.model.name == "wan" and run.model.config.config:          # built from a config (not a pretrained folder)
        frames, size = run.model.config.num_frames, run.model.config.height
        patch = run.model.config.config["patch_size"]
        row["tokens"] = (frames // patch[0]) * (size // patch[1]) * (size // patch[2])
    return row


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``NAME=OVERRIDE OVERRIDE`` (nothing after ``=``: the recipe as it is)."""
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--variant wants NAME=OVERRIDES (space-separated key=value), got {text!r}")
    return name, rest.split()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=TEACHER_RECIPE)
    p.add_argument("--variant", action="append", type=parse_variant, default=[],
                   help="'NAME=key=value key=value' (repeat; default: the B2 teacher candidates)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default="evaluation/results/video/teacher_candidates.json")
    args = p.parse_args()
    variants = dict(args.variant) or TEACHER_CANDIDATES
    rows = {name: time_variant(args.recipe, overrides, args.steps) for name, overrides in variants.items()}
    result = {"recipe": args.recipe, "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
              "torch": torch.__version__, "candidates": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
