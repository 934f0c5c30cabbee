"""The data side of the text-to-image benchmarks (:mod:`diffdistill.eval.t2i_benchmarks`, whose docstring shows the
folder layouts and commands): benchmark definitions, COCO-2014 / MJHQ-30k readers with their deterministic subsets,
and the image preparation both real and generated images go through (DMD2's evaluation transform).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..metrics.resize import to_uint8

BenchmarkName = Literal["coco30k", "coco10k", "mjhq30k"]

IMAGE_RESIZE = ("centre crop to a square of the short side (torchvision center_crop offsets), PIL LANCZOS to the "
                "evaluation resolution, uint8")
GENERATED_TO_UINT8 = "round((x + 1) * 127.5), clamped to 0..255"
SELECTION = "numpy.random.default_rng(subset_seed).permutation over captioned image ids sorted ascending; first n"
COCO_LAYOUT = ("COCO_ROOT/annotations/captions_val2014.json (the official 2014 captions file) and "
               "COCO_ROOT/val2014/<file_name> for every image it lists")
MJHQ_LAYOUT = ("MJHQ_ROOT/meta_data.json ({image_id: {category, prompt}}) and "
               "MJHQ_ROOT/mjhq30k_imgs/<category>/<image_id>.jpg")


@dataclass(frozen=True)
class Benchmark:
    """A benchmark's fixed definition: which data, how many prompts, at which resolution (the protocol citation)."""

    name: BenchmarkName
    dataset: Literal["coco2014", "mjhq30k"]
    n: int
    resolution: int
    protocol: str


BENCHMARKS: dict[str, Benchmark] = {
    "coco30k": Benchmark("coco30k", "coco2014", 30_000, 256, "COCO-2014 val2014 zero-shot FID-30k at 256 px, DMD2 "
                         "SD1.5 protocol (centre crop + LANCZOS 256, clean-fid Inception)"),
    "coco10k": Benchmark("coco10k", "coco2014", 10_000, 512, "COCO-2014 val2014 10k subset at 512 px, DMD2 SDXL "
                         "protocol (centre crop + LANCZOS 512, clean-fid Inception; CLIP ViT-g-14 raw cosine)"),
    "mjhq30k": Benchmark("mjhq30k", "mjhq30k", 30_000, 1024, "MJHQ-30k FID at 1024 px, overall and per category "
                         "(playgroundai/MJHQ-30K dataset card)"),
}


@dataclass(frozen=True)
class Item:
    """One prompt and its real image."""

    key: str                       # COCO image id or MJHQ image id
    prompt: str
    path: Path
    category: str = ""             # MJHQ only


# ----------------------------------------------------------------------------------------------- data
def select(keys: Sequence[str], n: int, seed: int) -> list[str]:
    """The first ``n`` of a seeded permutation of ``keys`` (sorted first, so file order never matters)."""
    ordered = sorted(keys, key=_id_order)
    return [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))[:n]]


def read_coco(root: str | Path, n: int, seed: int = 0) -> list[Item]:
    """``n`` COCO-2014 val captions (lowest annotation id per image, stripped) and their image files."""
    root = Path(root)
    captions_file = root / "annotations" / "captions_val2014.json"
    data = _read_json(captions_file, COCO_LAYOUT)
    if not isinstance(data, dict) or not data.get("images") or not data.get("annotations"):
        raise ValueError(f"{captions_file} lists no images or no captions; expected the official COCO captions "
                         "file with non-empty 'images' and 'annotations' lists")
    try:
        files = {str(im["id"]): im["file_name"] for im in data["images"]}
        first: dict[str, tuple[int, str]] = {}      # image id -> (annotation id, caption) with the lowest id
        for ann in data["annotations"]:
            key = str(ann["image_id"])
            if key not in first or ann["id"] < first[key][0]:
                first[key] = (ann["id"], ann["caption"].strip())
    except (KeyError, TypeError) as err:
        raise ValueError(f"{captions_file}: an entry lacks {err}; expected {COCO_LAYOUT}") from None
    unknown = set(first) - set(files)
    if unknown:
        raise ValueError(f"{captions_file}: captions for {len(unknown)} image ids that its 'images' list does not "
                         f"have (e.g. {sorted(unknown)[:3]}); is it a complete COCO captions file?")
    _check_count(len(first), n, f"{captions_file} has {len(first)} captioned images")
    items = [Item(k, first[k][1], root / "val2014" / files[k]) for k in select(list(first), n, seed)]
    return _check_files(items, root / "val2014", COCO_LAYOUT)


def read_mjhq(root: str | Path, n: int, seed: int = 0) -> list[Item]:
    """``n`` MJHQ-30k prompts with their category and image file (all of them when n is the full 30k)."""
    root = Path(root)
    meta_file = root / "meta_data.json"
    meta = _read_json(meta_file, MJHQ_LAYOUT)
    if not isinstance(meta, dict) or not meta:
        raise ValueError(f"{meta_file} holds no entries; expected {{image_id: {{category, prompt}}}}")
    bad = [k for k, v in meta.items() if not (isinstance(v, dict) and v.get("category") and "prompt" in v)]
    if bad:
        raise ValueError(f"{meta_file}: {len(bad)} entries lack 'category' or 'prompt' (e.g. {bad[:3]})")
    _check_count(len(meta), n, f"{meta_file} lists {len(meta)} images")
    images = root / "mjhq30k_imgs"
    items = [Item(k, meta[k]["prompt"].strip(), images / meta[k]["category"] / f"{k}.jpg", meta[k]["category"])
             for k in select(list(meta), n, seed)]
    return _check_files(items, images, MJHQ_LAYOUT)


def read_benchmark(benchmark: Benchmark, root: str | Path, n: int | None = None, seed: int = 0) -> list[Item]:
    reader = read_coco if benchmark.dataset == "coco2014" else read_mjhq
    return reader(root, n or benchmark.n, seed)


# ----------------------------------------------------------------------------------------------- images
def center_crop_resize(image: Image.Image, size: int) -> Image.Image:
    """DMD2's evaluation transform: crop the long edge to a centred square, then LANCZOS to ``size``.
    Offsets round as torchvision's ``center_crop`` does (Python ``round``), which DMD2 calls."""
    w, h = image.size
    side = min(w, h)
    left, top = int(round((w - side) / 2.0)), int(round((h - side) / 2.0))
    square = image.crop((left, top, left + side, top + side)) if (w, h) != (side, side) else image
    return square if side == size else square.resize((size, size), Image.LANCZOS)


def load_reference_image(path: Path, size: int) -> Tensor:
    """A real image as uint8 [3, size, size] (grey and CMYK files converted to RGB first)."""
    with Image.open(path) as im:
        return _to_tensor(center_crop_resize(im.convert("RGB"), size))


def prepare_generated(pixels: Tensor, size: int) -> Tensor:
    """Decoded pixels in [-1, 1] -> uint8 at the eval resolution, as the real side. Shapes: [B, 3, H, W] ->
    [B, 3, size, size]."""
    images = to_uint8(pixels.float().cpu(), "-1..1").permute(0, 2, 3, 1).numpy()
    return torch.stack([_to_tensor(center_crop_resize(Image.fromarray(im), size)) for im in images])


def _to_tensor(image: Image.Image) -> Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def reference_batches(items: Sequence[Item], size: int, batch_size: int, workers: int = 8) -> Iterator[Tensor]:
    """Real images in batches [B, 3, size, size] uint8. Threads decode and resize (PIL releases the GIL), reading
    up to two batches ahead so the feature network is not left waiting."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: deque = deque()
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            pending.append([pool.submit(lambda p: load_reference_image(p, size), it.path) for it in chunk])
            if len(pending) > 2:
                yield torch.stack([f.result() for f in pending.popleft()])
        while pending:
            yield torch.stack([f.result() for f in pending.popleft()])


def _read_json(path: Path, layout: str):
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; expected {layout}")
    text = path.read_text()
    if not text.strip():
        raise ValueError(f"{path} is empty; expected {layout}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); expected {layout}") from None


def _check_count(available: int, n: int, what: str) -> None:
    if available < n:
        raise ValueError(f"{what} but {n} were asked for; pass --n {available} (or fewer) for a smaller run, and "
                         "say so next to the numbers: FID depends on N")


def _check_files(items: list[Item], folder: Path, layout: str) -> list[Item]:
    missing = [it.path for it in items if not it.path.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of the {len(items)} selected images are missing under {folder} "
                                f"(e.g. {missing[0]}); expected {layout}")
    return items


def _id_order(key: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order (COCO), other ids as strings (MJHQ hashes)."""
    return (0, int(key)) if key.isdigit() else (1, key)
