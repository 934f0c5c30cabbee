"""``diffdistill encode``: captioned images or videos -> the latents folder that ``data: {name: latents}`` trains on.

    diffdistill encode --pipeline models/sdxl-base --images data/laion-aesthetic --out data/sdxl-latents
    diffdistill encode --pipeline models/Wan2.1-T2V-1.3B-Diffusers --videos data/clips --frames 81 \
        --height 480 --width 832 --out data/wan-latents

Images (and videos: GIF, or MP4/WebM/AVI/MOV through imageio-ffmpeg) come with captions either in ``metadata.jsonl`` (one ``{"file_name": ..., "text": ...}`` per line, the
Hugging Face imagefolder layout) or as a ``<image stem>.txt`` beside each image. Each image is resized so its short
side is ``resolution`` and centre-cropped (SDXL's size and crop conditioning, Podell et al. 2023 sec. 2.2, records
both in ``time_ids``); the pipeline's own VAE and text encoders do the encoding, so the latents and embeddings are
exactly what its UNet was trained on (models/pipeline_encoder.py). The unconditional condition follows the
pipeline: zeros where it sets ``force_zeros_for_empty_prompt`` (SDXL), else the encoded empty prompt (SD1.5, Wan).

A video keeps its first ``frames`` frames (4k + 1: the Wan VAE compresses time 4x after the first frame), each
resized to cover ``height`` x ``width`` and centre-cropped; its latents are [T', C, h, w] in the toolkit's video
layout (models/pipeline_encoder.PipelineEncoder.videos).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .latents import META, NULL

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
VIDEO_SUFFIXES = {".gif", ".mp4", ".webm", ".avi", ".mov", ".mkv"}


def captioned_images(folder: str | Path, suffixes: set[str] = IMAGE_SUFFIXES,
                     what: str = "images") -> list[tuple[Path, str]]:
    """(file path, caption) pairs from ``metadata.jsonl`` or ``.txt`` sidecars, in a stable (sorted) order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--{what} {str(folder)!r} is not a folder of captioned {what}")
    metadata = folder / "metadata.jsonl"
    if metadata.is_file():
        pairs = []
        for n, line in enumerate(metadata.read_text().splitlines(), 1):
            if line.strip():
                row = json.loads(line)
                if "file_name" not in row or "text" not in row:
                    raise ValueError(f"{metadata}:{n}: each line needs `file_name` and `text`, got {sorted(row)}")
                pairs.append((folder / row["file_name"], str(row["text"])))
    else:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
        missing = [p.name for p in files if not p.with_suffix(".txt").is_file()]
        if missing:
            raise FileNotFoundError(f"no caption for {missing[:3]} (and {max(0, len(missing) - 3)} more): put a "
                                    f"<stem>.txt beside each {what[:-1]}, or a metadata.jsonl with file_name and text")
        pairs = [(p, p.with_suffix(".txt").read_text().strip()) for p in files]
    if not pairs:
        raise FileNotFoundError(f"--{what} {str(folder)!r} holds no {what} ({', '.join(sorted(suffixes))})")
    return pairs


def cover_crop(image, height: int, width: int) -> tuple[Tensor, list[float]]:
    """A PIL image resized (bicubic) to cover ``height`` x ``width`` and centre-cropped -> [3, height, width] in
    [-1, 1], and SDXL's time ids [orig_h, orig_w, crop_top, crop_left, height, width]."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    scale = max(height / h, width / w)
    new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    image = image.crop((left, top, left + width, top + height))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
    return pixels, [float(h), float(w), float(top), float(left), float(height), float(width)]


def resize_center_crop(path: Path, resolution: int) -> tuple[Tensor, list[float]]:
    """[3, R, R] pixels in [-1, 1] and SDXL's time ids [orig_h, orig_w, crop_top, crop_left, R, R]."""
    from PIL import Image

    with Image.open(path) as image:
        return cover_crop(image, resolution, resolution)


def load_clip(path: Path, frames: int, height: int, width: int) -> Tensor:
    """The first ``frames`` frames of a video file, each :func:`cover_crop` -ped -> [frames, 3, height, width]."""
    import imageio.v3 as iio
    from PIL import Image

    try:
        video = iio.imread(path, index=None)                                  # [T, H, W, C] uint8
    except Exception as err:              # imageio raises plugin-specific types; name the file and the fix
        raise ValueError(f"cannot read the video {path} ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
                         "; MP4/WebM need `pip install diffdistill[video]` (imageio-ffmpeg)") from None
    if video.ndim == 3:
        video = video[..., None]
    if len(video) < frames:
        raise ValueError(f"{path} has {len(video)} frames but --frames {frames} were asked; drop the clip or ask "
                         "fewer frames")
    return torch.stack([cover_crop(Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f[..., :3]), height, width)[0]
                        for f in video[:frames]])


@dataclass
class ClipSize:
    """What each video becomes: its first ``frames`` frames (4k + 1 for Wan), ``height`` x ``width`` pixels."""

    frames: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.frames < 1 or (self.frames - 1) % 4:
            raise ValueError(f"--frames must be 4k + 1 (1, 5, 9, ..., 81: the Wan VAE compresses time 4x after the "
                             f"first frame), got {self.frames}")
        if self.height % 16 or self.width % 16 or min(self.height, self.width) <= 0:
            raise ValueError(f"--height and --width must be positive multiples of 16 (VAE factor 8 x patch 2), got "
                             f"{self.height} x {self.width}")


def encode_folder(pipeline: str | Path, images: str | Path, out: str | Path, resolution: int | None = None,
                  batch_size: int = 8, shard_size: int = 1000, device: str = "cpu", vae_dtype: str = "float32",
                  seed: int = 0, clip: ClipSize | None = None) -> Path:
    """Write the latents folder for the captioned ``images`` (a folder of videos when ``clip`` is given, for a
    video pipeline); see the module docstring. Returns ``out``."""
    from safetensors.torch import save_file

    from ..models.pipeline_encoder import PipelineEncoder, is_video_pipeline, read_model_index

    video = is_video_pipeline(read_model_index(pipeline))        # checked before any weights load
    if video and clip is None:
        raise ValueError(f"{pipeline} is a video pipeline (Wan): pass --videos FOLDER with --frames, --height, --width")
    if clip is not None and not video:
        raise ValueError(f"{pipeline} is an image pipeline: pass --images FOLDER (--videos needs a Wan pipeline)")
    what = "videos" if clip else "images"
    pairs = captioned_images(images, VIDEO_SUFFIXES if clip else IMAGE_SUFFIXES, what)
    encoder = PipelineEncoder(pipeline, device, getattr(torch, vae_dtype))
    resolution = None if clip else (resolution or encoder.default_resolution())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device).manual_seed(seed)
    shards, buffer = [], {"latents": [], "text": [], "pooled": [], "time_ids": []}

    def flush() -> None:
        if not buffer["latents"]:
            return
        name = f"shard-{len(shards):05d}.safetensors"
        save_file({k: torch.cat(v).contiguous() for k, v in buffer.items() if v}, str(out / name))
        shards.append(name)
        for v in buffer.values():
            v.clear()

    for start in tqdm(range(0, len(pairs), batch_size), desc="encode", unit="batch"):
        chunk = pairs[start:start + batch_size]
        if clip is not None:
            pixels = torch.stack([load_clip(path, clip.frames, clip.height, clip.width) for path, _ in chunk])
            buffer["latents"].append(encoder.videos(pixels, generator))
        else:
            pixels, ids = zip(*(resize_center_crop(path, resolution) for path, _ in chunk))
            buffer["latents"].append(encoder.images(torch.stack(pixels), generator))
            if encoder.sdxl:
                buffer["time_ids"].append(torch.tensor(ids))
        for key, value in encoder.text([caption for _, caption in chunk]).items():
            buffer[key].append(value)
        if sum(len(x) for x in buffer["latents"]) >= shard_size:
            flush()
    flush()
    save_file({k: v.contiguous() for k, v in encoder.null().items()}, str(out / NULL))
    meta = {"format": 1, "count": len(pairs), "shards": shards, "pipeline": str(pipeline), "resolution": resolution,
            what: str(images), "vae_scaling_factor": encoder.scaling_factor}
    if clip is not None:
        meta["clip"] = asdict(clip)
    (out / META).write_text(json.dumps(meta, indent=2))
    return out
