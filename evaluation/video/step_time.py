"""Seconds per training step of B2 video-teacher candidates on this machine (pick the one a 2-core CPU can train).

    python evaluation/video/step_time.py --out evaluation/results/video/teacher_candidates.json

Each candidate is recipes/video/teacher.yaml with a few overrides, built and stepped through the real trainer
(``prepare_training`` + ``train_step``: forward, backward, AdamW, EMA); one warm-up step, then the median of
``--steps`` timed steps. Run it with nothing else on the CPU: the times are only comparable within one quiet run.
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
from diffdistill.models.registry import build_section, count_parameters
from diffdistill.train.recipe import resolve_run
from diffdistill.train.trainer import make_accelerator, prepare_training, train_step

RECIPE = "recipes/video/teacher.yaml"
CANDIDATES = {
    "patch 1x4x4, 4 layers, 8 frames": [],
    "patch 1x2x2, 4 layers, 8 frames": ["model.config.patch_size=[1,2,2]"],
    "patch 1x4x4, 6 layers, 12 frames": ["model.config.num_layers=6", "model.num_frames=12", "data.frames=12"],
}


def time_candidate(overrides: list[str], steps: int) -> dict:
    run = resolve_run(RECIPE, [*overrides, "trainer.cpu=true"])
    torch.manual_seed(0)
    model = build_section(run.model)
    method = build_method(run.method, {"model": model}, run.data.config.num_classes)
    data = open_stream(run.data, run.trainer.batch_size, 0, 0)
    with tempfile.TemporaryDirectory() as tmp:
        accelerator = make_accelerator(run.trainer, Path(tmp))
        session = prepare_training(method, run.trainer, accelerator)
        seconds = []
        for step in range(steps + 1):
            start = time.perf_counter()
            train_step(method, session, data, step, run.trainer, accelerator, Path(tmp))
            seconds.append(time.perf_counter() - start)
    frames, size = run.model.config.num_frames, run.model.config.height
    patch = run.model.config.config["patch_size"]
    tokens = (frames // patch[0]) * (size // patch[1]) * (size // patch[2])
    return {"overrides": overrides, "parameters": count_parameters(model), "tokens": tokens,
            "batch_size": run.trainer.batch_size, "seconds_per_step": round(statistics.median(seconds[1:]), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default="evaluation/results/video/teacher_candidates.json")
    args = p.parse_args()
    rows = {name: time_candidate(overrides, args.steps) for name, overrides in CANDIDATES.items()}
    result = {"recipe": RECIPE, "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
              "torch": torch.__version__, "candidates": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
