"""Train the Fashion-MNIST evaluator (benchmark B1) and write it with the test-set reference statistics.

    python evaluation/fmnist/train_classifier.py                 # ~5 epochs on 2 CPU cores, a few minutes

Writes diffdistill/assets/fmnist/{classifier.safetensors, test_stats.safetensors, card.json} and the training log
to evaluation/results/fmnist/classifier_log.json. The card records the command, epochs, wall time, hardware and the
test accuracy (the bar: >= 90%).
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

from diffdistill.data import fmnist_to_tensor, load_fashion_mnist
from diffdistill.metrics.fmnist import ASSETS, FMNISTClassifier, save_evaluator, train_classifier
from diffdistill.metrics.frechet import FeatureStats


def evaluate(net: FMNISTClassifier, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    net.eval()
    feats, correct = [], 0
    with torch.no_grad():
        for xb, yb in zip(x.split(1000), y.split(1000)):
            f = net.features(xb)
            correct += int((net.head(f).argmax(1) == yb).sum())
            feats.append(f)
    return correct / len(y), torch.cat(feats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--what", default="Fashion-MNIST evaluator for benchmark B1 (FID-FMNIST features, class accuracy)",
                   help="what the card says the classifier is for (e.g. a reward model, not the evaluator)")
    p.add_argument("--log", default="evaluation/results/fmnist/classifier_log.json")
    p.add_argument("--out", default=str(ASSETS), help="the folder to write (default: the shipped evaluator's); a "
                   "second classifier (another seed) is a reward model that does not grade itself")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    x, y = fmnist_to_tensor(train_x), torch.from_numpy(train_y.astype("int64"))
    tx, ty = fmnist_to_tensor(test_x), torch.from_numpy(test_y.astype("int64"))
    net = FMNISTClassifier()
    per_epoch = len(x) // args.batch_size
    order = torch.empty(0, dtype=torch.long)

    def next_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal order
        if step % per_epoch == 0:
            order = torch.randperm(len(x))
        idx = order[(step % per_epoch) * args.batch_size:(step % per_epoch + 1) * args.batch_size]
        shift = torch.randint(-2, 3, (2,))                # small random translations: features robust to jitter
        return torch.roll(x[idx], shifts=(int(shift[0]), int(shift[1])), dims=(2, 3)), y[idx]

    started = time.perf_counter()
    bar = tqdm(total=args.epochs * per_epoch, desc="classifier")
    log = train_classifier(net, next_batch, args.epochs * per_epoch, args.lr, per_epoch,
                           lambda n: evaluate(n, tx, ty)[0], lambda step, loss: bar.update(1))
    bar.close()
    for line in log:
        print(json.dumps(line))
    acc, test_feats = evaluate(net, tx, ty)
    card = {"what": args.what,
            "command": "python " + " ".join(sys.argv), "epochs": args.epochs, "batch_size": args.batch_size,
            "lr": args.lr, "seed": args.seed, "test_accuracy": acc, "wall_time_s": round(time.perf_counter() - started, 1),
            "hardware": f"{platform.machine()} CPU, {torch.get_num_threads()} threads", "torch": torch.__version__,
            "parameters": sum(p.numel() for p in net.parameters()), "feature_dim": FMNISTClassifier.feature_dim}
    save_evaluator(net, FeatureStats.from_features(test_feats), card, args.out)
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    Path(args.log).write_text(json.dumps({"card": card, "epochs": log}, indent=2))
    print(json.dumps(card, indent=2))
    if acc < 0.90:
        sys.exit(f"test accuracy {acc:.4f} is below the 0.90 bar")


if __name__ == "__main__":
    main()
