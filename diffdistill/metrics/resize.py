"""Image preprocessing for Inception features: clean-fid's "clean" resize and pytorch-fid's "legacy" resize.

FID moves by several points with the resize filter alone (Parmar et al. 2022, "On Aliased Resizing and Surprising
Subtleties in GAN Evaluation"; arXiv:2104.11222 sec. 3), so the filter is part of the protocol:

* ``clean`` (clean-fid ``mode="clean"``): each channel resized on its own as a float32 PIL image (mode "F") with
  PIL's antialiased bicubic filter to 299 x 299, clipped to 0..255 (bicubic overshoots at edges), with **no**
  re-quantisation afterwards. Output float32 in 0..255,
  what clean-fid feeds the Inception network.
* ``legacy`` (pytorch-fid, clean-fid ``mode="legacy_pytorch"``): ``F.interpolate(mode="bilinear",
  align_corners=False)`` to 299 x 299 on images scaled to [0, 1], no antialiasing (so it aliases when downsampling).
  Output float32 in [0, 1], what pytorch-fid's ``InceptionV3(normalize_input=True)`` expects.

Range conventions (``value_range``): uint8 images are 0..255 and need no argument; float images must say what they
are, ``"0..1"``, ``"-1..1"`` (generator outputs) or ``"0..255"``: guessing from the data would silently mis-scale a
dark [0, 1] batch as if it were [-1, 1].

Shapes: images [N, C, H, W] (or a list of [C, H, W] of one size); C = 1 (repeated to 3) or 3.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

ValueRange = Literal["0..255", "0..1", "-1..1"]
ResizeMode = Literal["clean", "legacy"]
INCEPTION_SIZE = 299
_BOUNDS: dict[str, tuple[float, float]] = {"0..255": (0.0, 255.0), "0..1": (0.0, 1.0), "-1..1": (-1.0, 1.0)}
# float rounding in (x + 1) / 2 and the like can overshoot a bound by an ulp; more than this is a range error
_SLACK = 1e-5


def as_image_batch(images: Tensor | Sequence[Tensor], value_range: ValueRange | None = None) -> Tensor:
    """Validate a batch and return it as float32 in 0..255 with 3 channels (grey images repeated to RGB, as
    clean-fid and pytorch-fid do for grey data sets), on the input's device.

    Raises ValueError with the fix when the dtype, shape, channel count or value range is wrong.
    Shapes: [N, C, H, W] or list of [C, H, W] -> [N, 3, H, W].
    """
    x = _stack(images)
    if x.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {list(x.shape)}; for one image use images[None], "
                         "for grey images [N, H, W] use images[:, None]")
    if x.shape[1] not in (1, 3):
        hint = " (RGBA: drop alpha with images[:, :3])" if x.shape[1] == 4 else ""
        raise ValueError(f"images must have 1 (grey) or 3 (RGB) channels in dim 1, got {x.shape[1]} in shape "
                         f"{list(x.shape)}{hint}; channels-last [N, H, W, C] input needs images.permute(0, 3, 1, 2)")
    if x.shape[0] == 0:
        raise ValueError("got an empty batch of images")
    x = _to_0_255(x, value_range)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def to_uint8(images: Tensor, value_range: ValueRange) -> Tensor:
    """Quantise float images to uint8 by rounding, as saving them to PNG would (clamped to the range first).

    Use it to compare generated images with reference images read from files. torchmetrics' ``normalize=True``
    truncates instead (``(x * 255).byte()``), which darkens every pixel by half a level on average
    (torchmetrics #1244, #1339).
    """
    if images.dtype == torch.uint8:
        return images
    lo, hi = _bounds(value_range)
    x = (images.detach().double().clamp(lo, hi) - lo) * (255.0 / (hi - lo))
    return x.round().to(torch.uint8)


def clean_resize(images: Tensor | Sequence[Tensor], value_range: ValueRange | None = None,
                 size: int = INCEPTION_SIZE) -> Tensor:
    """clean-fid "clean" resize: PIL bicubic per channel on float32, clipped to 0..255, no quantisation. Runs on the
    CPU (PIL).

    Shapes: [N, C, H, W] -> [N, 3, size, size] float32 in 0..255 (cpu).
    """
    x = as_image_batch(images, value_range).cpu().numpy()
    out = np.empty((x.shape[0], 3, size, size), dtype=np.float32)
    for i in range(x.shape[0]):
        for c in range(3):
            out[i, c] = _pil_bicubic(x[i, c], size)
    return torch.from_numpy(out)


def legacy_resize(images: Tensor | Sequence[Tensor], value_range: ValueRange | None = None,
                  size: int = INCEPTION_SIZE) -> Tensor:
    """pytorch-fid resize: bilinear, align_corners=False, on images scaled to [0, 1], on the input's device.

    Shapes: [N, C, H, W] -> [N, 3, size, size] float32 in [0, 1].
    """
    x = as_image_batch(images, value_range) / 255.0
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def resize_for_inception(images: Tensor | Sequence[Tensor], mode: ResizeMode,
                         value_range: ValueRange | None = None) -> Tensor:
    """The resize of ``mode``; clean gives 0..255, legacy gives [0, 1] (each mode's network input convention)."""
    if mode == "clean":
        return clean_resize(images, value_range)
    if mode == "legacy":
        return legacy_resize(images, value_range)
    raise ValueError(f"unknown resize mode {mode!r}; use 'clean' (clean-fid) or 'legacy' (pytorch-fid)")


def _pil_bicubic(channel: np.ndarray, size: int) -> np.ndarray:
    # a 2-D float32 array becomes a 32-bit float ("F") PIL image: the resize keeps full precision, unlike resizing
    # the uint8 RGB image, which quantises the filter output (clean-fid's point)
    image = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32), mode="F")
    # bicubic rings past 0..255 at sharp edges; clean-fid clips the float result back (resize_single_channel)
    return np.asarray(image.resize((size, size), resample=Image.BICUBIC)).clip(0, 255)


def _stack(images: Tensor | Sequence[Tensor]) -> Tensor:
    if isinstance(images, Tensor):
        return images
    if not isinstance(images, Sequence) or not all(isinstance(im, Tensor) for im in images):
        raise ValueError(f"images must be a tensor [N, C, H, W] or a list of [C, H, W] tensors, got "
                         f"{type(images).__name__}")
    if len(images) == 0:
        raise ValueError("got an empty list of images")
    shapes = sorted({tuple(im.shape) for im in images})
    if len(shapes) > 1:
        raise ValueError(f"images in the list have different shapes {shapes[:4]}{' ...' if len(shapes) > 4 else ''}; "
                         "resize or center-crop them to one size first (the evaluation protocol should say how)")
    if len({im.dtype for im in images}) > 1:
        raise ValueError("images in the list have different dtypes; convert them to one dtype first")
    return torch.stack(list(images))


def _bounds(value_range: str) -> tuple[float, float]:
    if value_range not in _BOUNDS:
        raise ValueError(f"unknown value_range {value_range!r}; use one of {sorted(_BOUNDS)}")
    return _BOUNDS[value_range]


def _to_0_255(x: Tensor, value_range: ValueRange | None) -> Tensor:
    if x.dtype == torch.uint8:
        if value_range not in (None, "0..255"):
            raise ValueError(f"uint8 images are 0..255, but value_range={value_range!r} was given; drop the argument "
                             "or convert the images to float in that range")
        return x.float()
    if not x.is_floating_point():
        raise ValueError(f"images must be uint8 (0..255) or floating point, got {x.dtype}; convert with "
                         "images.to(torch.uint8) if the values are 0..255 integers")
    if value_range is None:
        raise ValueError("float images need an explicit value_range: '0..1', '-1..1' (typical generator output) or "
                         "'0..255'; it is not guessed from the data")
    lo, hi = _bounds(value_range)
    x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("images contain NaN or inf")
    slack = _SLACK * (hi - lo)
    found_lo, found_hi = float(x.min()), float(x.max())
    if found_lo < lo - slack or found_hi > hi + slack:
        raise ValueError(f"images declared as value_range={value_range!r} have values in [{found_lo:.4g}, "
                         f"{found_hi:.4g}]; pass the range they are really in, or clamp them with "
                         f"images.clamp({lo:g}, {hi:g}) if the overshoot is expected")
    if value_range == "0..255":
        return x.clamp(lo, hi)
    return (x.clamp(lo, hi) - lo) * (255.0 / (hi - lo))
