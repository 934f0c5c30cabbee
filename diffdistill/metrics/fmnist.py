"""Fashion-MNIST evaluator (benchmark B1): a small CNN classifier trained here, its feature space and the metrics.

No Inception or CLIP weights exist offline on the build machines (no model hub), so B1 measures in the feature space of a
classifier trained on the train split:

* FID-FMNIST: Fréchet distance of the 128-d penultimate features, generated images vs the 10k test images;
* class accuracy: share of samples classified as their conditioning class (our stand-in for CLIP score);
* diversity: mean pairwise feature distance within each class, averaged over classes (Phased DMD's concern:
  distillation that collapses modes lowers it).

These numbers are comparable across runs of this benchmark, not with published FIDs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ..files import load_safetensors
from .frechet import FeatureStats, frechet_distance

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "fmnist"
CLASSIFIER_FILE = "classifier.safetensors"
REFERENCE_FILE = "test_stats.safetensors"


class FMNISTClassifier(nn.Module):
    """CNN on [B, 1, 32, 32] images in [-1, 1]: three conv-BN-ReLU-pool stages (32 -> 16 -> 8 -> 4), a fourth conv,
    global average -> 128-d features -> 10 logits. BatchNorm runs in eval mode when scoring, so features are per
    sample."""

    feature_dim = 128

    def __init__(self) -> None:
        super().__init__()

        def stage(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]

        self.body = nn.Sequential(*stage(1, 32), *stage(32, 64), *stage(64, 128),
                                  nn.Conv2d(128, 128, 3, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(128, 10))

    def features(self, x: Tensor) -> Tensor:
        """Shapes: x [B, 1, H, W] in [-1, 1] -> [B, 128]."""
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"the Fashion-MNIST evaluator expects grey images [B, 1, H, W], got {list(x.shape)}")
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@dataclass
class FMNISTScores:
    fid: float
    accuracy: float
    diversity: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {"fid_fmnist": self.fid, "class_accuracy": self.accuracy, "diversity": self.diversity, "n": self.n}


class FMNISTEvaluator:
    """Loads the shipped classifier and the test-set reference statistics; scores batches of generated images."""

    def __init__(self, assets: str | Path = ASSETS, device: str | torch.device = "cpu", batch_size: int = 500) -> None:
        assets = Path(assets)
        for name in (CLASSIFIER_FILE, REFERENCE_FILE):
            if not (assets / name).is_file():
                raise FileNotFoundError(f"{assets / name} is missing; rebuild the evaluator with "
                                        "`python evaluation/fmnist/train_classifier.py` (see its model card)")
        self.device, self.batch_size = torch.device(device), batch_size
        self.net = FMNISTClassifier().to(self.device).eval()
        self.net.load_state_dict(load_safetensors(assets / CLASSIFIER_FILE, "reinstall diffdistill or rebuild the evaluator"))
        self.reference = FeatureStats.load(assets / REFERENCE_FILE)

    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Shapes: images [N, 1, 32, 32] in [-1, 1] -> features [N, 128], logits [N, 10] (batched)."""
        return features_and_logits(self.net, images, self.batch_size)

    def score(self, images: Tensor, labels: Tensor) -> FMNISTScores:
        """FID-FMNIST against the test set, class accuracy and within-class diversity of generated ``images``."""
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        feats, logits = self.features_and_logits(images)
        fid = frechet_distance(FeatureStats.from_features(feats), self.reference)
        accuracy = float((logits.argmax(1) == labels.cpu()).double().mean())
        return FMNISTScores(fid, accuracy, within_class_diversity(feats, labels.cpu()), images.shape[0])


@torch.no_grad()
def features_and_logits(net: FMNISTClassifier, images: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """``net`` (in eval mode) on ``images`` [N, 1, H, W] in [-1, 1], ``batch_size`` at a time, on the net's device ->
    features [N, 128], logits [N, 10] on the CPU."""
    device = next(net.parameters()).device
    feats, logits = [], []
    for chunk in images.split(batch_size):
        f = net.features(chunk.to(device).float().clamp(-1, 1))
        feats.append(f.cpu())
        logits.append(net.head(f).cpu())
    return torch.cat(feats), torch.cat(logits)


def within_class_diversity(features: Tensor, labels: Tensor) -> float:
    """Mean pairwise Euclidean feature distance within each class, averaged over classes with >= 2 samples."""
    per_class = []
    for c in labels.unique():
        f = features[labels == c].double()
        if f.shape[0] >= 2:
            d = torch.cdist(f, f)
            per_class.append(d.sum() / (f.shape[0] * (f.shape[0] - 1)))
    if not per_class:
        raise ValueError("diversity needs at least one class with two or more samples")
    return float(torch.stack(per_class).mean())


def train_classifier(net: FMNISTClassifier, next_batch: Callable[[int], tuple[Tensor, Tensor]], steps: int,
                     lr: float, eval_every: int, evaluate: Callable[[FMNISTClassifier], float],
                     progress: Callable[[int, float], None] | None = None) -> list[dict]:
    """Train ``net`` for ``steps`` AdamW steps with a one-cycle learning rate on ``next_batch(step)`` -> (x, y),
    label smoothing 0.05; ``evaluate(net)`` (test accuracy) every ``eval_every`` steps and at the end. The one
    training loop of both evaluators (B1 images, B2 video frames). Returns the log lines."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    log: list[dict] = []
    started = time.perf_counter()
    for step in range(steps):
        net.train()
        x, y = next_batch(step)
        loss = torch.nn.functional.cross_entropy(net(x), y, label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step, loss.item())
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            net.eval()
            log.append({"step": step + 1, "test_accuracy": evaluate(net), "last_loss": loss.item(),
                        "time_s": round(time.perf_counter() - started, 1)})
    net.eval()
    return log


def save_evaluator(net: FMNISTClassifier, reference: FeatureStats, card: dict, assets: str | Path = ASSETS) -> None:
    """Write the classifier, the reference statistics and a model card (JSON) into ``assets``."""
    assets = Path(assets)
    assets.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(assets / CLASSIFIER_FILE))
    reference.save(assets / REFERENCE_FILE, metadata={"what": "FMNISTClassifier features of the 10k test images"})
    (assets / "card.json").write_text(json.dumps(card, indent=2))
