"""Moving Fashion-MNIST video evaluator (benchmark B2): per-frame FID, class accuracy and consistency, and two
temporal Fréchet distances that see motion.

The feature network is B1's evaluator (metrics/fmnist.py: the same FMNISTClassifier architecture and training loop)
trained on single moving-sprite frames of the train split, because the B1 network, trained on centred 28-pixel
garments, recognises only about 43% of 32x32 frames holding a 16-pixel sprite (measured on 300 test clips): its
features would be out of domain. The reference statistics come from clips of the test split.

* per-frame FID (``fid_frames``): Fréchet distance of the 128-d features of every frame, generated vs reference;
* class accuracy: share of clips whose frame-averaged class probabilities pick the conditioning class;
* class consistency: mean share of a clip's frames classified as the clip's majority class (1 = no identity flips);
* ``fd_motion``: Fréchet distance over per-clip features of frame differences (x[t+1] - x[t]) / 2, averaged over
  time. Per-frame statistics cannot see order; this can: frozen clips have zero differences, shuffled ones jump;
* ``fd_track``: Fréchet distance over per-clip sprite-track statistics (mean speed, median |acceleration| of the
  intensity centroid, in pixels per frame). The median ignores the one or two bounces of a clip, so smooth
  constant-velocity motion scores low acceleration and jitter scores high.

The numbers compare runs of this benchmark; they are not FVD.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from .fmnist import FMNISTClassifier, FMNISTEvaluator, features_and_logits, save_evaluator
from .frechet import FeatureStats, frechet_distance

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "moving_fmnist" / "evaluator"
MOTION_FILE = "motion_stats.safetensors"
TRACK_FILE = "track_stats.safetensors"


@dataclass
class VideoScores:
    fid_frames: float
    fd_motion: float
    fd_track: float
    class_accuracy: float
    consistency: float
    mean_speed: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def sprite_tracks(clips: Tensor) -> Tensor:
    """Intensity centroid (y, x) of each frame in pixels. Shapes: clips [N, T, 1, H, W] in [-1, 1] -> [N, T, 2].
    A blank frame puts its centroid at the centre (no sprite, no motion to read)."""
    weight = ((clips.float() + 1) / 2).clamp(0, 1)[:, :, 0]                          # [N, T, H, W]
    h, w = weight.shape[-2:]
    mass = weight.sum((-2, -1))
    ys = torch.arange(h, dtype=weight.dtype).view(h, 1)
    xs = torch.arange(w, dtype=weight.dtype).view(1, w)
    cy = torch.where(mass > 1e-6, (weight * ys).sum((-2, -1)) / mass.clamp_min(1e-6), torch.full_like(mass, (h - 1) / 2))
    cx = torch.where(mass > 1e-6, (weight * xs).sum((-2, -1)) / mass.clamp_min(1e-6), torch.full_like(mass, (w - 1) / 2))
    return torch.stack([cy, cx], -1)


def track_statistics(clips: Tensor) -> Tensor:
    """Per-clip [mean speed, median |acceleration|] of the sprite centroid. Shapes: [N, T, 1, H, W] -> [N, 2];
    needs T >= 3 (two velocities make one acceleration)."""
    if clips.shape[1] < 3:
        raise ValueError(f"track statistics need clips of at least 3 frames, got {clips.shape[1]}")
    velocity = sprite_tracks(clips).diff(dim=1)                                          # [N, T-1, 2]
    speed = velocity.norm(dim=-1).mean(1)
    acceleration = velocity.diff(dim=1).norm(dim=-1).median(dim=1).values
    return torch.stack([speed, acceleration], -1)


def frame_differences(clips: Tensor) -> Tensor:
    """(x[t+1] - x[t]) / 2, in [-1, 1]. Shapes: [N, T, C, H, W] -> [N, T-1, C, H, W]."""
    return clips.float().diff(dim=1) / 2


@torch.no_grad()
def clip_features(net: FMNISTClassifier, clips: Tensor, batch_size: int = 1000) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Frame features [N, T, 128], frame logits [N, T, 10], motion features [N, 128] (features of the frame
    differences, averaged over time) and track statistics [N, 2] of ``clips`` [N, T, 1, H, W]."""
    n, t = clips.shape[:2]
    feats, logits = features_and_logits(net, clips.reshape(n * t, *clips.shape[2:]), batch_size)
    motion, _ = features_and_logits(net, frame_differences(clips).reshape(n * (t - 1), *clips.shape[2:]), batch_size)
    return (feats.view(n, t, -1), logits.view(n, t, -1), motion.view(n, t - 1, -1).mean(1),
            track_statistics(clips.cpu()))


class VideoEvaluator:
    """Loads the B2 frame classifier and the test-clip reference statistics; scores generated clips."""

    def __init__(self, assets: str | Path = ASSETS, device: str | torch.device = "cpu", batch_size: int = 1000) -> None:
        assets = Path(assets)
        for name in (MOTION_FILE, TRACK_FILE, "card.json"):
            if not (assets / name).is_file():
                raise FileNotFoundError(f"{assets / name} is missing; rebuild the video evaluator with "
                                        "`python evaluation/video/train_evaluator.py`")
        self.frames = FMNISTEvaluator(assets, device, batch_size)
        self.motion = FeatureStats.load(assets / MOTION_FILE)
        self.track = FeatureStats.load(assets / TRACK_FILE)
        self.card = json.loads((assets / "card.json").read_text())

    def check(self, clips: Tensor) -> None:
        size = self.card["clip"]["size"]
        if clips.dim() != 5 or clips.shape[2] != 1 or tuple(clips.shape[-2:]) != (size, size) or clips.shape[1] < 3:
            raise ValueError(f"the Moving Fashion-MNIST evaluator scores grey clips [N, T >= 3, 1, {size}, {size}] "
                             f"(the clips its reference came from), got {list(clips.shape)}")
        if clips.shape[0] < 2:
            raise ValueError(f"Fréchet distances need at least 2 clips, got {clips.shape[0]}")

    def clip_features(self, clips: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Frame features [N, T, 128], frame logits [N, T, 10], motion features [N, 128], track statistics [N, 2]."""
        self.check(clips)
        return clip_features(self.frames.net, clips, self.frames.batch_size)

    def score(self, clips: Tensor, labels: Tensor) -> VideoScores:
        """Score ``clips`` [N, T, 1, H, W] in [-1, 1] generated for class ``labels`` [N] (one sprite per clip)."""
        if labels.dim() != 1 or labels.shape[0] != clips.shape[0]:
            raise ValueError(f"need one class label per clip (one-sprite clips): {clips.shape[0]} clips, labels of "
                             f"shape {list(labels.shape)}")
        feats, logits, motion, track = self.clip_features(clips)
        votes = logits.softmax(-1).mean(1).argmax(-1)
        per_frame = logits.argmax(-1)                                                          # [N, T]
        majority = per_frame.mode(dim=1).values
        consistency = (per_frame == majority[:, None]).double().mean()
        return VideoScores(
            fid_frames=frechet_distance(FeatureStats.from_features(feats.flatten(0, 1)), self.frames.reference),
            fd_motion=frechet_distance(FeatureStats.from_features(motion), self.motion),
            fd_track=frechet_distance(FeatureStats.from_features(track), self.track),
            class_accuracy=float((votes == labels.cpu()).double().mean()),
            consistency=float(consistency), mean_speed=float(track[:, 0].mean()), n=clips.shape[0])


def video_report(clips: Tensor, labels: Tensor | None, data_name: str | None) -> dict[str, float]:
    """The B2 scores of clips a model trained on ``moving_fmnist`` generated ({} for other data, unlabelled or
    differently sized clips, or too few clips): what ``diffdistill sample`` prints next to its GIFs. With few clips
    the Fréchet distances are biased upwards; compare them at equal ``n``."""
    if data_name != "moving_fmnist" or labels is None or clips.shape[0] < 2 or not (ASSETS / MOTION_FILE).is_file():
        return {}
    evaluator = VideoEvaluator()
    size = evaluator.card["clip"]["size"]
    if clips.shape[1] < 3 or tuple(clips.shape[2:]) != (1, size, size):
        return {}
    return evaluator.score(clips, labels).as_dict()


def save_video_evaluator(net: FMNISTClassifier, clips: Tensor, card: dict, assets: str | Path = ASSETS) -> None:
    """Write the frame classifier, a card and the reference statistics of the real ``clips`` [N, T, 1, H, W]."""
    net.eval()
    feats, _, motion, track = clip_features(net, clips)
    save_evaluator(net, FeatureStats.from_features(feats.flatten(0, 1)), card, assets)
    FeatureStats.from_features(motion).save(Path(assets) / MOTION_FILE, metadata={"what": "frame-difference features"})
    FeatureStats.from_features(track).save(Path(assets) / TRACK_FILE, metadata={"what": "sprite-track statistics"})
