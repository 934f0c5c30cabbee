"""Data streams: deterministic, resumable batches for the trainer.

A stream hands out batch number ``position`` for this rank as a pure function of (seed, rank, position), so a run
resumed from a checkpoint (which stores the position) sees exactly the batches it would have seen had it not been
killed, and ranks never draw the same samples. Streams are registered by name for recipes (``data.name``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

import torch
from torch import Tensor

from ..config import Section, registry_entry, typed_section
from ..models.base import Cond
from ..models.toy import GaussianMixture, MixtureConfig


@dataclass
class Batch:
    """A training batch. Shapes: x0 [B, ...] (data or latents); cond fields batch-first; index [B] sample ids.

    ``uncond`` is the unconditional counterpart of ``cond`` (batch-first too) for text-conditioned teachers, whose
    CFG needs the empty-prompt embedding of their own text encoders; None where the model has a built-in null
    condition (class labels) or the data has none.
    """

    x0: Tensor
    cond: Cond
    index: Tensor
    uncond: Cond | None = None
    states: Tensor | None = None          # ODE pairs: the teacher's x at ``state_times`` [B, S, ...] (ode_pairs.py)
    state_times: Tensor | None = None     # [S], noisy -> clean

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda x: x.to(device) if x is not None else None      # noqa: E731
        return Batch(self.x0.to(device), self.cond.to(device), self.index.to(device), move(self.uncond),
                     move(self.states), self.state_times)

    def fingerprint(self) -> str:
        """Short hash of the sample ids and values: the same batch gives the same fingerprint (resume tests)."""
        h = hashlib.sha1(self.index.cpu().numpy().tobytes())
        h.update(self.x0.detach().cpu().float().numpy().tobytes())
        return h.hexdigest()[:12]


class DataStream(Protocol):
    """What the trainer needs from data: the next batch, and a position to save and restore."""

    position: int

    def next(self) -> Batch: ...


def batch_at(stream: DataStream, position: int) -> Batch:
    """Batch number ``position`` of ``stream`` without moving it (every stream is a pure function of its position):
    previews take their prompts from batch 0, also in a run that has taken no step (an export)."""
    saved = stream.position
    stream.position = position
    try:
        return stream.next()
    finally:
        stream.position = saved


def _generator(seed: int, rank: int, position: int) -> torch.Generator:
    # One independent stream per (seed, rank, position): resumable and distinct across ranks.
    key = hashlib.sha256(f"{seed}/{rank}/{position}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:8], "little") & (2**63 - 1))


def epoch_batch_indices(count: int, batch_size: int, seed: int, rank: int, world: int, position: int) -> Tensor:
    """Sample ids of batch ``position`` for ``rank``: epochs of a permutation seeded by (seed, epoch), shared by all
    ranks; rank r reads its slice of each global batch; the ragged tail of each epoch is dropped. A pure function of
    its arguments, so a resumed run sees exactly the batches it would have seen. Shape: [batch_size]."""
    per_epoch = count // (batch_size * world)
    if per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} x {world} processes exceeds the {count} samples of the dataset")
    epoch, slot = divmod(position, per_epoch)
    order = torch.randperm(count, generator=_generator(seed, -1, epoch))
    start = (slot * world + rank) * batch_size
    return order[start:start + batch_size]


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


FMNIST_DEB_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FMNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")


def _fmnist_dirs(root: str | None) -> list[Path]:
    """Where Fashion-MNIST is looked for: only ``root`` when a recipe names one (a typo must not silently train on
    another copy), else $DIFFDISTILL_DATA, the Debian package's folder and the download cache."""
    if root:
        return [Path(root).expanduser()]
    env = os.environ.get("DIFFDISTILL_DATA")
    dirs: list[Path] = []
    if env:
        dirs += [Path(env) / "fashion-mnist", Path(env)]
    return dirs + [FMNIST_DEB_DIR, Path.home() / ".cache" / "diffdistill" / "fashion-mnist"]


def load_fashion_mnist(split: Literal["train", "test"], root: str | None = None,
                       download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST as uint8 arrays: images [N, 28, 28], labels [N] (60k train / 10k test).

    Looked up in ``root`` when given (only there), else in ``$DIFFDISTILL_DATA[/fashion-mnist]``, the Debian
    package's folder and the download cache; with ``download`` the original gzipped IDX files are fetched into the
    cache.
    """
    names = FMNIST_FILES[split]
    found = next((d for d in _fmnist_dirs(root) if all((d / n).is_file() for n in names)), None)
    if found is None and download:
        found = Path(root).expanduser() if root else _fmnist_dirs(None)[-1]
        found.mkdir(parents=True, exist_ok=True)
        for name in names:
            urllib.request.urlretrieve(FMNIST_URL + name, found / name)
    if found is None:
        raise FileNotFoundError(
            f"Fashion-MNIST ({split}: {', '.join(names)}) not found in {[str(d) for d in _fmnist_dirs(root)]}. Get it "
            "with one of: `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, offline-friendly); put the four "
            ".gz files in $DIFFDISTILL_DATA/fashion-mnist; or set data.download=true (needs internet).")
    with gzip.open(found / names[0]) as fh:
        images = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28).copy()   # writable for torch
    with gzip.open(found / names[1]) as fh:
        labels = np.frombuffer(fh.read(), np.uint8, offset=8).copy()
    if len(images) != len(labels):
        raise ValueError(f"{found}: {len(images)} images but {len(labels)} labels; the files are damaged")
    return images, labels


def fmnist_to_tensor(images: np.ndarray, pad_to: int = 32) -> Tensor:
    """uint8 [N, 28, 28] -> float [N, 1, S, S] in [-1, 1], padded with background (-1) to S (UNets like 32)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div(127.5).sub(1.0)[:, None]
    pad = (pad_to - x.shape[-1]) // 2
    return torch.nn.functional.pad(x, (pad, pad, pad, pad), value=-1.0) if pad > 0 else x


@dataclass
class FashionMNISTConfig:
    """Class-conditional Fashion-MNIST images [B, 1, 32, 32] in [-1, 1] (benchmark B1)."""

    split: Literal["train", "test"] = "train"
    labels: bool = True
    pad_to: int = 32
    root: str | None = None
    download: bool = False

    @property
    def num_classes(self) -> int:
        return 10 if self.labels else 0


class FashionMNISTStream:
    """Epochs of a permutation seeded by (seed, epoch), shared by all ranks; rank r reads its slice of each global
    batch. Batch ``position`` is a pure function of (seed, rank, world, position): exact resume."""

    def __init__(self, cfg: FashionMNISTConfig, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1):
        self.cfg, self.batch_size, self.seed, self.rank, self.world = cfg, batch_size, seed, rank, world
        images, labels = load_fashion_mnist(cfg.split, cfg.root, cfg.download)
        self.images, self.labels = images, torch.from_numpy(labels.astype(np.int64))
        epoch_batch_indices(len(images), batch_size, seed, rank, world, 0)    # fail now if the batch is too large
        self.position = 0

    def next(self) -> Batch:
        index = epoch_batch_indices(len(self.images), self.batch_size, self.seed, self.rank, self.world, self.position)
        x0 = fmnist_to_tensor(self.images[index.numpy()], self.cfg.pad_to)
        self.position += 1
        return Batch(x0, Cond(labels=self.labels[index] if self.cfg.labels else None), index)


def class_names(data_name: str | None, num_classes: int) -> list[str]:
    """Names of a class-conditional dataset's classes, for grids and the demo (``class i`` where none are known)."""
    if data_name in ("fmnist", "moving_fmnist") and num_classes == len(FMNIST_CLASSES):   # sprites: FMNIST garments
        return list(FMNIST_CLASSES)
    return [f"class {i}" for i in range(num_classes)]


def trained_mixture(export_meta: dict[str, Any]) -> MixtureConfig | None:
    """The toy mixture an exported model was trained on (from its ``run_config``), or None for other data."""
    data = export_meta.get("run_config", {}).get("data", {})
    if data.get("name") != "toy_gmm":
        return None
    return data_config(data)[1].mixture


def _toy_stream(cfg: ToyDataConfig, batch_size: int, seed: int, rank: int, world: int) -> ToyMixtureStream:
    return ToyMixtureStream(cfg, batch_size, seed, rank)


# name -> (module, config class, stream factory(cfg, batch_size, seed, rank, world)); imported on use
DATASETS: dict[str, tuple[str, str, str]] = {
    "toy_gmm": ("diffdistill.data", "ToyDataConfig", "_toy_stream"),
    "fmnist": ("diffdistill.data", "FashionMNISTConfig", "FashionMNISTStream"),
    "latents": ("diffdistill.data.latents", "LatentsConfig", "LatentsStream"),
    "moving_fmnist": ("diffdistill.data.moving", "MovingFMNISTConfig", "MovingFMNISTStream"),
    "ode_pairs": ("diffdistill.data.ode_pairs", "ODEPairsConfig", "ODEPairsStream"),
}


def data_config(spec: dict[str, Any], path: str = "data") -> tuple[str, Any]:
    """Validate a ``{name: ..., **fields}`` data section; returns (name, config dataclass)."""
    return typed_section(DATASETS, "name", spec, path)


def build_stream(spec: dict[str, Any], batch_size: int, seed: int, rank: int, world: int = 1) -> DataStream:
    return open_stream(Section(*data_config(spec)), batch_size, seed, rank, world)


def open_stream(section: Section, batch_size: int, seed: int, rank: int, world: int = 1) -> DataStream:
    """The stream of a validated data section, for ``rank`` of ``world`` processes."""
    return registry_entry(DATASETS, "name", section.name, "data")[1](section.config, batch_size, seed, rank, world)
