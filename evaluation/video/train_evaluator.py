"""Train the Moving Fashion-MNIST video evaluator (benchmark B2) and write it with the test-clip reference statistics.

    python evaluation/video/train_evaluator.py                 # ~8 epochs on 2 CPU cores, about 10 minutes alone

The frame classifier is B1's architecture and training loop (diffdistill/metrics/fmnist.py) on frames of one
train-split sprite at a uniformly random position of the canvas (the frames of B2 clips). The reference statistics
(frame features, frame-difference features, sprite-track statistics) come from ``--clips`` test-split clips made with
the teacher recipe's data settings. Writes diffdistill/assets/moving_fmnist/evaluator/ and
evaluation/results/video/evaluator_log.json; the card records the command, wall time, hardware and the accuracies
(frame and clip; the bar: clip accuracy >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffdistill.data.moving import MovingFMNIST, MovingFMNISTConfig
from diffdistill.metrics.fmnist import FMNISTClassifier, features_and_logits, train_classifier
from diffdistill.metrics.video import ASSETS, save_video_evaluator


def place_sprites(sprites: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One sprite [B, 1, s, s] in [0, 1] per frame at a uniformly random whole-pixel position on a black ``size``
    canvas -> frames [B, 1, size, size] in [-1, 1], as the clips draw them."""
    b, _, s, _ = sprites.shape
    corners = torch.randint(size - s + 1, (b, 2), generator=generator)
    canvas = torch.zeros(b, 1, size, size)
    for i, (y, x) in enumerate(corners.tolist()):
        canvas[i, :, y:y + s, x:x + s] = sprites[i]
    return canvas * 2 - 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clips", type=int, default=5000, help="test clips for the reference statistics")
    p.add_argument("--recipe-data", default="recipes/video/teacher.yaml", help="the recipe whose data section the "
                   "reference clips copy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log", default="evaluation/results/video/evaluator_log.json")
    args = p.parse_args()
    import yaml

    data = dict(yaml.safe_load(Path(args.recipe_data).read_text())["data"])
    data.pop("name")
    clip_cfg = MovingFMNISTConfig(**{**data, "split": "test"})
    if clip_cfg.sprites != 1:
        sys.exit("the video evaluator scores one-sprite clips; the recipe draws two")
    torch.manual_seed(args.seed)
    train = MovingFMNIST(MovingFMNISTConfig(**{**data, "split": "train"}))
    test_clips = MovingFMNIST(clip_cfg)
    gen = torch.Generator().manual_seed(args.seed)
    per_epoch = len(train.sprites) // args.batch_size

    def next_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(train.sprites), (args.batch_size,), generator=gen)
        return place_sprites(train.sprites[idx], clip_cfg.size, gen), train.labels[idx]

    clips = [test_clips.clip(i) for i in tqdm(range(args.clips), desc="reference clips")]
    x = torch.stack([c.frames for c in clips])
    y = torch.stack([c.labels[0] for c in clips])
    held_out = x[:1000]

    def frame_accuracy(net: FMNISTClassifier) -> float:
        _, logits = features_and_logits(net, held_out.flatten(0, 1))
        return float((logits.argmax(1) == y[:1000].repeat_interleave(x.shape[1])).double().mean())

    net = FMNISTClassifier()
    started = time.perf_counter()
    bar = tqdm(total=args.epochs * per_epoch, desc="frame classifier")
    log = train_classifier(net, next_batch, args.epochs * per_epoch, args.lr, per_epoch, frame_accuracy,
                           lambda step, loss: bar.update(1))
    bar.close()
    for line in log:
        print(json.dumps(line))
    _, logits = features_and_logits(net, x.flatten(0, 1))
    logits = logits.view(*x.shape[:2], -1)
    clip_accuracy = float((logits.softmax(-1).mean(1).argmax(-1) == y).double().mean())
    card = {"what": "Moving Fashion-MNIST evaluator for benchmark B2 (frame classifier: FMNISTClassifier on frames "
                    "of one train-split sprite; reference: test-split clips)",
            "command": "python " + " ".join(sys.argv), "epochs": args.epochs, "batch_size": args.batch_size,
            "lr": args.lr, "seed": args.seed, "clip": {k: v for k, v in vars(clip_cfg).items() if k != "root"},
            "reference_clips": args.clips, "frame_accuracy": log[-1]["test_accuracy"], "clip_accuracy": clip_accuracy,
            "wall_time_s": round(time.perf_counter() - started, 1),
            "hardware": f"{platform.machine()} CPU, {torch.get_num_threads()} threads", "torch": torch.__version__,
            "feature_dim": FMNISTClassifier.feature_dim}
    save_video_evaluator(net, x, card, ASSETS)
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    Path(args.log).write_text(json.dumps({"card": card, "log": log}, indent=2))
    print(json.dumps(card, indent=2))
    if clip_accuracy < 0.90:
        sys.exit(f"clip accuracy {clip_accuracy:.4f} is below the 0.90 bar")


if __name__ == "__main__":
    main()
