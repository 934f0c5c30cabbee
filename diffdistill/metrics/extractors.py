"""Feature extractors behind one small interface, and batched, cached feature extraction.

A Fréchet distance, KID or precision/recall is only meaningful next to the exact feature protocol (network,
weights, resize, resolution, library versions: Parmar et al., arXiv:2104.11222). Every extractor therefore
describes itself with :meth:`FeatureExtractor.protocol`, which is saved with cached features and reference
statistics and is part of the cache key.

* :class:`InceptionExtractor`: the FID Inception, ``clean`` (clean-fid: PIL bicubic, torchscript weights) or
  ``legacy`` (pytorch-fid: torch bilinear, .pth weights);
* :class:`FMNISTExtractor`: the shipped Fashion-MNIST classifier's 128-d features (benchmark B1);
* :class:`CustomExtractor`: any ``nn.Module`` or callable mapping images to [N, D] (DINOv2, CLIP, ...), as
  clean-fid's ``custom_feat_extractor`` and torchmetrics' ``feature=nn.Module`` allow.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import PIL
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import __version__
from .fmnist import ASSETS, CLASSIFIER_FILE, FMNISTEvaluator
from .inception import InceptionMode, InceptionNetwork, load_inception
from .resize import INCEPTION_SIZE, ValueRange, resize_for_inception

Images = Tensor | Iterable[Tensor] | Iterable[tuple[Tensor, ...]]


@runtime_checkable
class FeatureExtractor(Protocol):
    """Images -> features. ``__call__`` moves its input to the extractor's device itself (some preprocessing, such as
    the clean resize, runs on the CPU first). Shapes: images [B, C, H, W] -> [B, D] (float32 or float64)."""

    name: str

    def __call__(self, images: Tensor) -> Tensor: ...

    def protocol(self) -> dict[str, str]: ...

    def to(self, device: str | torch.device) -> "FeatureExtractor": ...


class InceptionExtractor:
    """FID Inception pool_3 features (2048-d) under clean-fid's ``clean`` or pytorch-fid's ``legacy`` protocol.

    ``value_range`` declares the input images (see :mod:`.resize`; uint8 needs none). ``network`` skips the weights
    search (tests, or a network already loaded with :func:`.inception.load_inception`).
    """

    def __init__(self, mode: InceptionMode = "clean", value_range: ValueRange | None = None,
                 path: str | Path | None = None, network: InceptionNetwork | None = None,
                 device: str | torch.device = "cpu", download: bool = True, allow_unverified: bool = False) -> None:
        self.network = network if network is not None else load_inception(path, mode, device, download,
                                                                           allow_unverified=allow_unverified)
        if self.network.mode != mode:
            raise ValueError(f"the network was loaded for {self.network.mode!r} mode, not {mode!r}")
        self.mode, self.value_range = mode, value_range
        self.name = f"inception-2015-12-05-{mode}"
        self.to(device)

    def to(self, device: str | torch.device) -> "InceptionExtractor":
        self.device = torch.device(device)
        self.network.to(self.device)
        return self

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        if self.mode == "legacy":                   # torch resize: run it where the network is
            images = images.to(self.device)
        return self.network(resize_for_inception(images, self.mode, self.value_range).to(self.device))

    def protocol(self) -> dict[str, str]:
        resize = ("PIL bicubic per channel on float32, no quantisation (clean-fid clean)" if self.mode == "clean"
                  else "torch bilinear align_corners=False on [0, 1] (pytorch-fid)")
        return {"extractor": self.name, "features": "pool_3, 2048-d", "resize": resize,
                "resolution": str(INCEPTION_SIZE), "input_range": self.value_range or "uint8 0..255",
                "weights_file": self.network.path.name, "weights_sha256": self.network.sha256,
                **_versions(pillow=self.mode == "clean")}


class FMNISTExtractor:
    """Benchmark B1's 128-d Fashion-MNIST classifier features. Input [N, 1, 32, 32] in [-1, 1] (the evaluator
    clamps to that range)."""

    name = "fmnist-classifier"

    def __init__(self, assets: str | Path = ASSETS, device: str | torch.device = "cpu", batch_size: int = 500) -> None:
        self.assets = Path(assets)
        self.evaluator = FMNISTEvaluator(self.assets, device=device, batch_size=batch_size)
        self.to(device)

    def to(self, device: str | torch.device) -> "FMNISTExtractor":
        self.evaluator.device = torch.device(device)
        self.evaluator.net.to(self.evaluator.device)
        return self

    def __call__(self, images: Tensor) -> Tensor:
        return self.evaluator.features_and_logits(images)[0]

    def protocol(self) -> dict[str, str]:
        return {"extractor": self.name, "features": "penultimate, 128-d", "resize": "none", "resolution": "32",
                "input_range": "-1..1 (clamped)", "weights_file": CLASSIFIER_FILE,
                "weights_sha256": hashlib.sha256((self.assets / CLASSIFIER_FILE).read_bytes()).hexdigest(),
                **_versions()}


class CustomExtractor:
    """Any ``nn.Module`` or callable mapping images [B, C, H, W] to features [B, D].

    For an ``nn.Module`` the weights hash covers its state dict; a plain callable cannot be hashed, so put what
    identifies it (model name, checkpoint, preprocessing) into ``info``: it goes into the protocol and the cache key.
    """

    def __init__(self, fn: nn.Module | Callable[[Tensor], Tensor], name: str, info: dict[str, str] | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.fn, self.name, self.info = fn, name, dict(info or {})
        if isinstance(fn, nn.Module):
            fn.eval()
        self.to(device)

    def to(self, device: str | torch.device) -> "CustomExtractor":
        self.device = torch.device(device)
        if isinstance(self.fn, nn.Module):
            self.fn.to(self.device)
        return self

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        features = self.fn(images.to(self.device))
        if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[0] != images.shape[0]:
            shape = list(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"extractor {self.name!r} must return [B, D] features for {images.shape[0]} images, "
                             f"got {shape}; flatten or pool its output")
        return features

    def protocol(self) -> dict[str, str]:
        weights = module_sha256(self.fn) if isinstance(self.fn, nn.Module) else "unhashed callable"
        return {"extractor": self.name, "weights_sha256": weights, **self.info, **_versions()}


def extract_features(extractor: FeatureExtractor, images: Images, batch_size: int = 64,
                     device: str | torch.device = "cpu", progress: bool = True,
                     cache_path: str | Path | None = None) -> Tensor:
    """Features of all ``images`` in batches of ``batch_size`` on ``device``, returned on the CPU.

    ``images``: a tensor [N, C, H, W], or an iterable of batches [B, C, H, W] (any B; a DataLoader yielding
    (images, labels) tuples works, the first element is used). With ``cache_path`` (a .safetensors file) the
    features are stored with their protocol and a SHA-256 of the input pixels, and returned from the file while
    both match, without running the extractor; the inputs are hashed first, so they must be re-iterable (a tensor,
    list or DataLoader, not a generator). Shapes: -> [N, D].
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    protocol = extractor.protocol()
    key = ""
    if cache_path is not None:
        if isinstance(images, Iterator):
            raise ValueError("cache_path needs re-iterable images (a tensor, a list of batches or a DataLoader): "
                             "they are hashed before deciding whether to run the extractor; a generator would be "
                             "used up by the hash")
        key = _cache_key(images, protocol)
        cached = _read_cache(Path(cache_path), key)
        if cached is not None:
            return cached
    extractor = extractor.to(device)
    total = images.shape[0] if isinstance(images, Tensor) else None
    parts = []
    with tqdm(total=total, unit="img", desc=extractor.name, disable=not progress, leave=False) as bar:
        for batch in _rebatch(_chunks(images), batch_size):
            parts.append(extractor(batch).detach().cpu())
            bar.update(batch.shape[0])
    if not parts:
        raise ValueError("no images to extract features from")
    features = torch.cat(parts)
    if cache_path is not None:
        _write_cache(Path(cache_path), features, key, protocol)
    return features


def module_sha256(module: nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and bytes, in key order)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _versions(pillow: bool = False) -> dict[str, str]:
    versions = {"torch": torch.__version__, "diffdistill": __version__}
    if pillow:                                  # the clean resize is PIL's implementation of bicubic
        versions["pillow"] = PIL.__version__
    return versions


def _tensor_bytes(t: Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _chunks(images: Images) -> Iterator[Tensor]:
    if isinstance(images, Tensor):
        yield images
        return
    for item in images:
        chunk = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(chunk, Tensor):
            raise ValueError(f"expected batches of image tensors [B, C, H, W], got {type(chunk).__name__}")
        yield chunk


def _rebatch(chunks: Iterable[Tensor], batch_size: int) -> Iterator[Tensor]:
    """Regroup incoming chunks of any size into batches of exactly ``batch_size`` (the last may be smaller)."""
    pending: list[Tensor] = []
    count = 0
    for chunk in chunks:
        while chunk.shape[0]:
            take = min(batch_size - count, chunk.shape[0])
            pending.append(chunk[:take])
            count += take
            chunk = chunk[take:]
            if count == batch_size:
                yield torch.cat(pending)
                pending, count = [], 0
    if pending:
        yield torch.cat(pending)


def _cache_key(images: Images, protocol: dict[str, str]) -> str:
    """SHA-256 of the protocol and the pixels; independent of how the images are split into batches."""
    digest = hashlib.sha256(json.dumps(protocol, sort_keys=True).encode())
    layout = None
    for chunk in _chunks(images):
        if (chunk.dtype, chunk.shape[1:]) != layout:    # record dtype and per-image shape when they change
            layout = (chunk.dtype, chunk.shape[1:])
            digest.update(f"|{chunk.dtype}|{tuple(chunk.shape[1:])}|".encode())
        digest.update(_tensor_bytes(chunk))
    return digest.hexdigest()


def _read_cache(path: Path, key: str) -> Tensor | None:
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        if (f.metadata() or {}).get("key") == key:
            return f.get_tensor("features")
    warnings.warn(f"feature cache {path} was made from other images or another protocol; recomputing and "
                  "overwriting it", stacklevel=3)
    return None


def _write_cache(path: Path, features: Tensor, key: str, protocol: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    save_file({"features": features.contiguous()}, str(partial),
              metadata={"key": key, "protocol": json.dumps(protocol, sort_keys=True), "n": str(features.shape[0])})
    partial.replace(path)
