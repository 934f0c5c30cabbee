"""Data streams: deterministic, resumable batches for the trainer.

A stream hands out batch number ``position`` for this rank as a pure function of (seed, rank, position), so a run
resumed from a checkpoint (which stores the position) sees exactly the batches it would have seen had it not been
killed, and ranks never draw the same samples. Streams are registered by name for recipes (``data.name``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from .config import ConfigError, from_dict, unknown_key_error
from .models.base import Cond
from .models.toy import GaussianMixture, MixtureConfig


@dataclass
class Batch:
    """A training batch. Shapes: x0 [B, ...] (data or latents); cond fields batch-first; index [B] sample ids."""

    x0: Tensor
    cond: Cond
    index: Tensor

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.x0.to(device), self.cond.to(device), self.index.to(device))

    def fingerprint(self) -> str:
        """Short hash of the sample ids and values: the same batch gives the same fingerprint (resume tests)."""
        h = hashlib.sha1(self.index.cpu().numpy().tobytes())
        h.update(self.x0.detach().cpu().float().numpy().tobytes())
        return h.hexdigest()[:12]


class DataStream(Protocol):
    """What the trainer needs from data: the next batch, and a position to save and restore."""

    position: int

    def next(self) -> Batch: ...


def _generator(seed: int, rank: int, position: int) -> torch.Generator:
    # One independent stream per (seed, rank, position): resumable and distinct across ranks.
    key = hashlib.sha256(f"{seed}/{rank}/{position}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:8], "little") & (2**63 - 1))


@dataclass
class ToyDataConfig:
    """Samples from the 2-D Gaussian mixture (the analytic toy); ``labels`` adds the mixture's class labels."""

    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    labels: bool = False

    @property
    def num_classes(self) -> int:
        return self.mixture.num_classes if self.labels else 0


class ToyMixtureStream:
    """Infinite stream of exact mixture samples; batch ``position`` is a pure function of (seed, rank, position)."""

    def __init__(self, cfg: ToyDataConfig, batch_size: int, seed: int = 0, rank: int = 0) -> None:
        self.cfg, self.batch_size, self.seed, self.rank = cfg, batch_size, seed, rank
        self.mixture = GaussianMixture(cfg.mixture)
        self.position = 0

    def next(self) -> Batch:
        gen = _generator(self.seed, self.rank, self.position)
        labels = None
        if self.cfg.labels:
            labels = torch.randint(self.cfg.mixture.num_classes, (self.batch_size,), generator=gen)
        x0 = self.mixture.sample_data(self.batch_size, labels, generator=gen)
        index = self.position * self.batch_size + torch.arange(self.batch_size)
        self.position += 1
        return Batch(x0, Cond(labels=labels), index)


# name -> (config class, stream factory(cfg, batch_size, seed, rank))
DATASETS: dict[str, tuple[type, Any]] = {
    "toy_gmm": (ToyDataConfig, ToyMixtureStream),
}


def data_config(spec: dict[str, Any], path: str = "data") -> tuple[str, Any]:
    """Validate a ``{name: ..., **fields}`` data section; returns (name, config dataclass)."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{path} needs a `name`: one of {', '.join(DATASETS)}")
    if spec["name"] not in DATASETS:
        raise unknown_key_error(path, f"name={spec['name']}", [f"name={k}" for k in DATASETS])
    cfg_cls, _ = DATASETS[spec["name"]]
    return spec["name"], from_dict(cfg_cls, {k: v for k, v in spec.items() if k != "name"}, path)


def build_stream(spec: dict[str, Any], batch_size: int, seed: int, rank: int) -> DataStream:
    name, cfg = data_config(spec)
    return DATASETS[name][1](cfg, batch_size, seed, rank)
