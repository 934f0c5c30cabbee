"""Pictures people would rather look at than read: sample grids, frame strips, animated GIF/MP4 clips and 2-D
scatter plots (matplotlib, PIL, imageio)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor


def save_samples(samples: Tensor, path: str | Path, title: str = "", labels: Tensor | None = None,
                 class_names: Sequence[str] | None = None, per_class: int = 10) -> Path:
    """Write samples as a PNG: points [B, 2] -> scatter plot; images [B, C, H, W] in [-1, 1] -> grid (with
    ``labels`` [B]: one row per class, at most ``per_class`` images, the class name on the left: the one layout of
    previews, ``diffdistill sample`` and the benchmark grids); video [B, T, C, H, W] -> one row of frames per clip (with ``labels``: at most ``per_class`` clips of each class,
    named by their class). Animated clips: :func:`save_video`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = samples.detach().float().cpu()
    if samples.dim() == 2 and samples.shape[1] == 2:
        return _scatter(samples, path, title)
    if samples.dim() == 4 and labels is not None:
        return _class_grid(samples, labels.cpu(), class_names, per_class, path)
    if samples.dim() == 5 and labels is not None:
        return _frame_strips(samples, labels.cpu(), class_names, per_class, path)
    if samples.dim() == 5:
        b, t = samples.shape[:2]
        return _grid(samples.reshape(b * t, *samples.shape[2:]), path, columns=t)
    if samples.dim() == 4:
        return _grid(samples, path, columns=math.ceil(math.sqrt(samples.shape[0])))
    raise ValueError(f"cannot draw samples of shape {list(samples.shape)}; expected [B, 2], [B, C, H, W] or "
                     "[B, T, C, H, W]")


def _scatter(points: Tensor, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _grid(images: Tensor, path: Path, columns: int) -> Path:
    from PIL import Image

    n, c, h, w = images.shape
    if c not in (1, 3):
        images, c = images[:, :3] if c > 3 else images[:, :1], 3 if c > 3 else 1
    rows = math.ceil(n / columns)
    canvas = torch.zeros(c, rows * (h + 2), columns * (w + 2))
    for i in range(n):
        r, col = divmod(i, columns)
        canvas[:, r * (h + 2) + 1: r * (h + 2) + 1 + h, col * (w + 2) + 1: col * (w + 2) + 1 + w] = images[i]
    pixels = ((canvas.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(pixels[..., 0] if c == 1 else pixels).save(path)
    return path


def _class_rows(images: Tensor, labels: Tensor, class_names: Sequence[str] | None,
                per_class: int) -> tuple[list[Tensor], list[str]]:
    """Group samples [B, ...] (images or clips) by label: (at most ``per_class`` samples per class, the names)."""
    classes = sorted(set(labels.tolist()))
    names = [class_names[c] if class_names is not None and 0 <= c < len(class_names) else f"class {c}"
             for c in classes]
    return [images[labels == c][:per_class] for c in classes], names


def _rows_image(rows: Sequence[Tensor], names: Sequence[str]):
    """Rows of images [k, C, H, W] in [-1, 1] side by side, each row's name on its left -> one RGB PIL image: the
    one labelled layout (class grids, frame strips, GIF frames)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    margin = 6 + int(max(font.getlength(name) for name in names))
    c, h, w = rows[0].shape[1:]
    columns = max(len(r) for r in rows)
    canvas = Image.new("RGB", (margin + columns * (w + 2), len(rows) * (h + 2)))
    draw = ImageDraw.Draw(canvas)
    for r, (name, row) in enumerate(zip(names, rows)):
        draw.text((2, r * (h + 2) + max(0, (h - 10) // 2)), name, fill=(255, 255, 255), font=font)
        pixels = ((row.clamp(-1, 1) + 1) * 127.5).round().byte()
        for col, img in enumerate(pixels):
            tile = img[:3] if c >= 3 else img[:1].expand(3, -1, -1)
            canvas.paste(Image.fromarray(tile.permute(1, 2, 0).numpy()), (margin + col * (w + 2) + 1, r * (h + 2) + 1))
    return canvas


def _class_grid(images: Tensor, labels: Tensor, class_names: Sequence[str] | None, per_class: int,
                path: Path) -> Path:
    _rows_image(*_class_rows(images, labels, class_names, per_class)).save(path)
    return path


def _frame_strips(clips: Tensor, labels: Tensor, class_names: Sequence[str] | None, per_class: int,
                  path: Path) -> Path:
    """One row of frames per clip (at most ``per_class`` clips of each class), named by its class."""
    groups, group_names = _class_rows(clips, labels, class_names, per_class)
    rows = [clip for group in groups for clip in group]
    names = [name for group, name in zip(groups, group_names) for _ in group]
    _rows_image(rows, names).save(path)
    return path


def save_video(clips: Tensor, path: str | Path, labels: Tensor | None = None,
               class_names: Sequence[str] | None = None, per_class: int = 2, fps: float = 4.0,
               min_side: int = 96, mp4: bool = True) -> list[Path]:
    """Clips [B, T, C, H, W] in [-1, 1] -> an animated GIF at ``path`` (suffix .gif): GIF frame t is the grid of
    every clip's frame t (with ``labels``: a row per class, at most ``per_class`` clips, the class name on the left),
    enlarged by a whole factor with nearest-neighbour pixels to at least ``min_side`` per clip; plus (``mp4``) an MP4
    next to it where imageio-ffmpeg is installed (``pip install diffdistill[video]``). Returns the files written."""
    clips = clips.detach().float().cpu()
    if clips.dim() != 5:
        raise ValueError(f"save_video draws clips [B, T, C, H, W], got {list(clips.shape)}")
    if labels is None:
        return save_video_rows([clips], [""], path, fps, min_side, mp4)
    return save_video_rows(*_class_rows(clips, labels.cpu(), class_names, per_class), path, fps, min_side, mp4)


def save_video_rows(rows: Sequence[Tensor], names: Sequence[str], path: str | Path, fps: float = 4.0,
                    min_side: int = 96, mp4: bool = True) -> list[Path]:
    """Rows of clips (each [k, T, C, H, W] in [-1, 1], one name per row) -> an animated GIF whose frame t shows
    frame t of every clip in its row and column (e.g. a row per class, a column per step count), and an MP4 where
    imageio-ffmpeg is installed. Returns the files written."""
    import imageio.v3 as iio
    import numpy as np

    path = Path(path).with_suffix(".gif")
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [r.detach().float().cpu() for r in rows]
    factor = max(1, -(-min_side // min(rows[0].shape[-2:])))
    big = [r.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1) for r in rows]
    frames = [np.asarray(_rows_image([r[:, t] for r in big], names)) for t in range(big[0].shape[1])]
    iio.imwrite(path, frames, duration=1000 / fps, loop=0)
    written = [path]
    if not mp4:
        return written
    try:
        import imageio_ffmpeg  # noqa: F401  (only asks whether the ffmpeg binary is installed)
    except ImportError:
        return written
    even = [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in frames]    # H.264 needs even sizes
    iio.imwrite(path.with_suffix(".mp4"), even, fps=fps, codec="libx264", macro_block_size=1)
    written.append(path.with_suffix(".mp4"))
    return written


def to_pil(images: Tensor, min_side: int = 0) -> list:
    """Images [B, C, H, W] in [-1, 1] -> a list of PIL images (grey for C = 1, RGB for C = 3), enlarged by a whole
    factor with nearest-neighbour pixels to at least ``min_side``: 32-pixel samples stay crisp in a browser, which
    would otherwise smooth them when it scales them up."""
    from PIL import Image

    images = images.detach().float().cpu()
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, 1 or 3, H, W], got {list(images.shape)}")
    factor = max(1, -(-min_side // min(images.shape[-2:])))       # ceil division
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().byte()
    pixels = pixels.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]
