"""The B2 metrics on real, frame-shuffled, frozen and noisy test clips: what each score reads for clips that are
right, wrong in time only, or wrong in every frame.

    python evaluation/video/metric_sanity.py --n 400          # writes evaluation/results/video/metric_sanity.json

Real clips come from the test split with seed 123 (the reference statistics use seed 0); shuffled clips permute each
clip's frames; frozen clips repeat the first frame; noisy clips add Gaussian noise (sigma 0.3) to every frame.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from diffdistill.data.moving import MovingFMNIST, MovingFMNISTConfig
from diffdistill.metrics.video import VideoEvaluator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--out", default="evaluation/results/video/metric_sanity.json")
    args = p.parse_args()
    evaluator = VideoEvaluator()
    clips = MovingFMNIST(MovingFMNISTConfig(**{**evaluator.card["clip"], "split": "test"}), seed=123)
    made = [clips.clip(i) for i in range(args.n)]
    x = torch.stack([c.frames for c in made])
    y = torch.stack([c.labels[0] for c in made])
    order = torch.stack([torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(i)) for i in range(args.n)])
    variants = {"real": x, "shuffled": torch.stack([c[o] for c, o in zip(x, order)]),
                "frozen": x[:, :1].expand_as(x).contiguous(),
                "noisy": (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)}
    result = {"n": args.n, "seed": 123, **{name: evaluator.score(v, y).as_dict() for name, v in variants.items()}}
    Path(args.out).write_text(json.dumps(result, indent=2))
    for name in variants:
        print(name, {k: round(v, 4) for k, v in result[name].items()})


if __name__ == "__main__":
    main()
