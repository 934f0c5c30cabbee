"""Moving Fashion-MNIST clips (benchmark B2's data, registry name ``moving_fmnist``).

Each clip shows ``sprites`` Fashion-MNIST garments (downscaled to ``sprite_size``) on a black ``size`` x ``size``
canvas, each moving at a constant velocity and bouncing off the borders (an elastic reflection: the position mirrors
back inside and that velocity component flips sign), the Moving MNIST construction of Srivastava et al. (2015,
arXiv:1502.04681) with Fashion-MNIST sprites. Train clips take their sprites from the train split, test clips from
the test split. Clip ``i`` is a pure function of (seed, split, i), so a stream resumes exactly and ranks never share
clips.

Shapes: x0 [B, T, 1, size, size] in [-1, 1] (the toolkit's video layout); labels [B] (one sprite) or
[B, sprites] (the class of each sprite, in drawing order).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ..models.base import Cond
from . import Batch, load_fashion_mnist


@dataclass
class MovingFMNISTConfig:
    """Clips of ``frames`` frames of ``size`` x ``size`` pixels with ``sprites`` garments of ``sprite_size`` pixels,
    each moving ``min_speed``..``max_speed`` pixels per frame in a uniformly random direction."""

    split: Literal["train", "test"] = "train"
    frames: int = 8
    size: int = 32
    sprites: int = 1
    sprite_size: int = 16
    min_speed: float = 1.0
    max_speed: float = 3.0
    labels: bool = True
    root: str | None = None
    download: bool = False

    def __post_init__(self) -> None:
        if self.frames < 1 or self.sprites not in (1, 2):
            raise ValueError(f"moving_fmnist: frames must be >= 1 and sprites 1 or 2, got frames={self.frames}, "
                             f"sprites={self.sprites}")
        if not 4 <= self.sprite_size < self.size:
            raise ValueError(f"moving_fmnist: sprite_size must lie in [4, size) so sprites can move, got "
                             f"sprite_size={self.sprite_size}, size={self.size}")
        if not 0 <= self.min_speed <= self.max_speed:
            raise ValueError(f"moving_fmnist: need 0 <= min_speed <= max_speed, got {self.min_speed}, {self.max_speed}")

    @property
    def num_classes(self) -> int:
        return 10 if self.labels else 0


@dataclass
class Clip:
    """One clip and its ground truth. Shapes: frames [T, 1, H, W]; labels [S]; positions and velocities [S, T, 2]
    (the top-left corner (y, x) of each sprite in each frame, in pixels, and the velocity it moved on with)."""

    frames: Tensor
    labels: Tensor
    positions: Tensor
    velocities: Tensor


def bounce(position: float, velocity: float, limit: float) -> tuple[float, float]:
    """One frame of motion on [0, limit] with elastic reflection at both ends: (new position, new velocity)."""
    position += velocity
    while position < 0 or position > limit:          # a fast sprite may cross the range more than once
        if position < 0:
            position, velocity = -position, -velocity
        else:
            position, velocity = 2 * limit - position, -velocity
    return position, velocity


class MovingFMNIST:
    """The clips of one split: ``clip(i)`` for any index i >= 0."""

    def __init__(self, cfg: MovingFMNISTConfig, seed: int = 0) -> None:
        self.cfg, self.seed = cfg, seed
        images, labels = load_fashion_mnist(cfg.split, cfg.root, cfg.download)
        sprites = torch.from_numpy(images).float().div(255.0)[:, None]               # [N, 1, 28, 28] in [0, 1]
        self.sprites = torch.nn.functional.interpolate(sprites, size=(cfg.sprite_size,) * 2, mode="area")
        self.labels = torch.from_numpy(labels.astype(np.int64))

    def _generator(self, index: int) -> torch.Generator:
        key = hashlib.sha256(f"moving_fmnist/{self.cfg.split}/{self.seed}/{index}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(key[:8], "little") & (2**63 - 1))

    def clip(self, index: int) -> Clip:
        c, gen = self.cfg, self._generator(index)
        limit = float(c.size - c.sprite_size)
        canvas = torch.zeros(c.frames, 1, c.size, c.size)
        picks = torch.randint(len(self.sprites), (c.sprites,), generator=gen)
        positions = torch.zeros(c.sprites, c.frames, 2)
        velocities = torch.zeros(c.sprites, c.frames, 2)
        for s, pick in enumerate(picks.tolist()):
            pos = (torch.rand(2, generator=gen, dtype=torch.float64) * limit).tolist()
            speed = c.min_speed + (c.max_speed - c.min_speed) * float(torch.rand(1, generator=gen, dtype=torch.float64))
            angle = 2 * np.pi * float(torch.rand(1, generator=gen, dtype=torch.float64))
            vel = [speed * np.sin(angle), speed * np.cos(angle)]
            for t in range(c.frames):
                if t > 0:
                    for axis in (0, 1):
                        pos[axis], vel[axis] = bounce(pos[axis], vel[axis], limit)
                positions[s, t], velocities[s, t] = torch.tensor(pos), torch.tensor(vel)
                y, x = round(pos[0]), round(pos[1])
                region = canvas[t, :, y:y + c.sprite_size, x:x + c.sprite_size]
                torch.maximum(region, self.sprites[pick], out=region)           # overlapping sprites: the brighter
        return Clip(canvas * 2 - 1, self.labels[picks], positions, velocities)


class MovingFMNISTStream:
    """Batches of clips; batch ``position`` of ``rank`` holds clips (position * world + rank) * B ... + B - 1, so
    it is a pure function of (seed, rank, world, position): exact resume, disjoint ranks."""

    def __init__(self, cfg: MovingFMNISTConfig, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1):
        self.cfg, self.batch_size, self.rank, self.world = cfg, batch_size, rank, world
        self.clips = MovingFMNIST(cfg, seed)
        self.position = 0

    def next(self) -> Batch:
        first = (self.position * self.world + self.rank) * self.batch_size
        index = torch.arange(first, first + self.batch_size)
        clips = [self.clips.clip(int(i)) for i in index]
        self.position += 1
        labels = torch.stack([c.labels for c in clips])
        labels = labels[:, 0] if self.cfg.sprites == 1 else labels
        return Batch(torch.stack([c.frames for c in clips]), Cond(labels=labels if self.cfg.labels else None), index)
