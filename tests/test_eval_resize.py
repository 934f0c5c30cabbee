"""Inception preprocessing: the clean resize is PIL's float bicubic bit for bit, legacy is torch bilinear, and bad
inputs fail with a message that says what to do."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffdistill.metrics.resize import as_image_batch, clean_resize, legacy_resize, resize_for_inception, to_uint8


def pil_reference(x255: torch.Tensor, size: int = 299) -> torch.Tensor:
    """clean-fid's recipe written out with PIL directly: each channel as a mode-F image, bicubic, clipped to
    0..255, no rounding."""
    out = np.stack([np.stack([np.asarray(Image.fromarray(img[c].numpy().astype(np.float32), mode="F")
                                         .resize((size, size), resample=Image.BICUBIC)) for c in range(img.shape[0])])
                    for img in x255])
    return torch.from_numpy(out.clip(0, 255))


def test_clean_resize_clips_bicubic_ringing_like_clean_fid():
    # a black/white checkerboard: upsampling it with bicubic overshoots below 0 and above 255 next to each edge
    board = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 255
    x = board.to(torch.uint8).expand(1, 3, 8, 8)
    raw = np.asarray(Image.fromarray(board.numpy().astype(np.float32), mode="F").resize((299, 299), Image.BICUBIC))
    assert raw.min() < -1 and raw.max() > 256                       # the filter itself leaves the range
    ours = clean_resize(x)
    assert ours.min() == 0 and ours.max() == 255
    assert torch.equal(ours[0, 0], torch.from_numpy(raw.clip(0, 255)))


def test_clean_resize_is_pil_float_bicubic_exactly():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 37, 53, generator=gen)                       # float [0, 1], non-square, upsampling
    ours = clean_resize(x, value_range="0..1")
    assert ours.shape == (2, 3, 299, 299) and ours.dtype == torch.float32
    assert torch.equal(ours, pil_reference(x * 255))
    big = torch.rand(1, 3, 320, 310, generator=gen) * 2 - 1           # [-1, 1], downsampling (antialiased)
    assert torch.equal(clean_resize(big, value_range="-1..1"), pil_reference((big + 1) * 127.5))
    # no quantisation after the resize: values between the 256 levels survive
    assert not torch.equal(ours, ours.round())


def test_uint8_path_equals_converting_to_float_first_and_grey_is_repeated():
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (2, 3, 20, 24), generator=gen, dtype=torch.uint8)
    assert torch.equal(clean_resize(x), clean_resize(x.float(), value_range="0..255"))
    assert torch.equal(clean_resize(x), pil_reference(x.float()))
    grey = x[:, :1]
    out = clean_resize(grey)
    assert out.shape == (2, 3, 299, 299) and torch.equal(out[:, 0], out[:, 2])
    assert torch.equal(out[:, 1], clean_resize(grey.expand(-1, 3, -1, -1))[:, 1])
    # a list of [C, H, W] tensors of one size is a batch
    assert torch.equal(clean_resize(list(x)), clean_resize(x))


def test_legacy_resize_is_torch_bilinear_on_unit_range():
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (2, 3, 32, 32), generator=gen, dtype=torch.uint8)
    expect = F.interpolate(x.float() / 255, size=(299, 299), mode="bilinear", align_corners=False)
    assert torch.equal(legacy_resize(x), expect)
    assert torch.equal(resize_for_inception(x, "legacy"), expect)
    assert float(expect.max()) <= 1.0
    # the two modes really differ (bilinear vs bicubic, and the output scale)
    assert not torch.allclose(resize_for_inception(x, "clean") / 255, expect, atol=1e-3)


def test_to_uint8_rounds_instead_of_truncating():
    x = torch.tensor([0.0, 0.4 / 255, 0.999 / 255, 254.6 / 255, 1.0]).view(1, 1, 1, 5)
    assert to_uint8(x, "0..1").flatten().tolist() == [0, 0, 1, 255, 255]
    assert to_uint8(torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3), "-1..1").flatten().tolist() == [0, 128, 255]


@pytest.mark.parametrize("images, kwargs, match", [
    (torch.rand(2, 3, 8, 8), {}, "explicit value_range"),
    (torch.rand(2, 3, 8, 8) * 2 - 1, {"value_range": "0..1"}, r"values in \[-"),
    (torch.rand(2, 3, 8, 8) * 255, {"value_range": "-1..1"}, "clamp"),
    (torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8), {"value_range": "0..1"}, "uint8 images are 0..255"),
    (torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.int64), {}, "uint8 .* or floating point"),
    (torch.rand(3, 8, 8), {"value_range": "0..1"}, r"\[N, C, H, W\].*images\[None\]"),
    (torch.rand(2, 4, 8, 8), {"value_range": "0..1"}, "drop alpha"),
    (torch.rand(2, 8, 8, 3), {"value_range": "0..1"}, "permute"),
    ([torch.rand(3, 8, 8), torch.rand(3, 9, 8)], {"value_range": "0..1"}, "different shapes.*resize or center-crop"),
    (torch.full((1, 3, 4, 4), float("nan")), {"value_range": "0..1"}, "NaN"),
    (torch.rand(2, 3, 8, 8), {"value_range": "0-1"}, "unknown value_range"),
])
def test_bad_inputs_say_what_is_wrong(images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        as_image_batch(images, **kwargs)


def test_tiny_overshoot_from_float_rounding_is_accepted_and_clamped():
    x = torch.tensor([-1e-7, 1 + 1e-7]).view(1, 1, 1, 2)
    assert as_image_batch(x, "0..1").flatten()[:2].tolist() == [0.0, 255.0]
    with pytest.raises(ValueError, match="unknown resize mode"):
        resize_for_inception(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), "bicubic")
