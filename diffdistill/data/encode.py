"""``diffdistill encode``: captioned images -> the latents folder that ``data: {name: latents}`` trains on.

    diffdistill encode --pipeline models/sdxl-base --images data/laion-aesthetic --out data/sdxl-latents

Images come with captions either in ``metadata.jsonl`` (one ``{"file_name": ..., "text": ...}`` per line, the
Hugging Face imagefolder layout) or as a ``<image stem>.txt`` beside each image. Each image is resized so its short
side is ``resolution`` and centre-cropped (SDXL's size and crop conditioning, Podell et al. 2023 sec. 2.2, records
both in ``time_ids``); the pipeline's own VAE and text encoders do the encoding, so the latents and embeddings are
exactly what its UNet was trained on (models/diffusers.PipelineEncoder). The unconditional condition follows the
pipeline: zeros where it sets ``force_zeros_for_empty_prompt`` (SDXL), else the encoded empty prompt (SD1.5).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .latents import META, NULL

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def captioned_images(folder: str | Path) -> list[tuple[Path, str]]:
    """(image path, caption) pairs from ``metadata.jsonl`` or ``.txt`` sidecars, in a stable (sorted) order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--images {str(folder)!r} is not a folder of captioned images")
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
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        missing = [p.name for p in images if not p.with_suffix(".txt").is_file()]
        if missing:
            raise FileNotFoundError(f"no caption for {missing[:3]} (and {max(0, len(missing) - 3)} more): put a "
                                    "<image stem>.txt beside each image, or a metadata.jsonl with file_name and text")
        pairs = [(p, p.with_suffix(".txt").read_text().strip()) for p in images]
    if not pairs:
        raise FileNotFoundError(f"--images {str(folder)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return pairs


def resize_center_crop(path: Path, resolution: int) -> tuple[Tensor, list[float]]:
    """[3, R, R] pixels in [-1, 1] and SDXL's time ids [orig_h, orig_w, crop_top, crop_left, R, R]."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        w, h = image.size
        scale = resolution / min(w, h)
        new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
    return pixels, [float(h), float(w), float(top), float(left), float(resolution), float(resolution)]


def encode_folder(pipeline: str | Path, images: str | Path, out: str | Path, resolution: int | None = None,
                  batch_size: int = 8, shard_size: int = 1000, device: str = "cpu", vae_dtype: str = "float32",
                  seed: int = 0) -> Path:
    """Write the latents folder for ``images`` (see the module docstring); returns ``out``."""
    from safetensors.torch import save_file

    from ..models.diffusers import PipelineEncoder

    pairs = captioned_images(images)
    encoder = PipelineEncoder(pipeline, device, getattr(torch, vae_dtype))
    resolution = resolution or encoder.default_resolution()
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
        pixels, ids = zip(*(resize_center_crop(path, resolution) for path, _ in chunk))
        buffer["latents"].append(encoder.images(torch.stack(pixels), generator))
        for key, value in encoder.text([caption for _, caption in chunk]).items():
            buffer[key].append(value)
        if encoder.sdxl:
            buffer["time_ids"].append(torch.tensor(ids))
        if sum(len(x) for x in buffer["latents"]) >= shard_size:
            flush()
    flush()
    save_file({k: v.contiguous() for k, v in encoder.null().items()}, str(out / NULL))
    meta = {"format": 1, "count": len(pairs), "shards": shards, "pipeline": str(pipeline), "resolution": resolution,
            "images": str(images), "vae_scaling_factor": encoder.scaling_factor}
    (out / META).write_text(json.dumps(meta, indent=2))
    return out
