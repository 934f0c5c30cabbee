"""Text-to-image benchmarks: COCO-2014 zero-shot FID (30k / 10k captions) and MJHQ-30k, from local data folders.

A run reads the benchmark's prompts and real images, samples one image per prompt from an exported text model,
puts both sides through the same centre crop + LANCZOS resize and the same FID feature extractor, and writes a JSON
report holding every number next to the protocol that produced it (the protocols of DMD2, arXiv:2405.14867 sec. 5, and MJHQ, arXiv:2402.17245):

| benchmark | real images                      | N      | resolution | anchor                                          |
|-----------|----------------------------------|--------|------------|-------------------------------------------------|
| coco30k   | COCO-2014 val2014, 1 caption each | 30,000 | 256        | DMD2 SD1.5 one-step FID 8.35                    |
| coco10k   | COCO-2014 val2014, 1 caption each | 10,000 | 512        | DMD2 SDXL FID 19.01 (1-step), 19.32 (4-step)    |
| mjhq30k   | MJHQ-30k, 10 categories x 3,000   | 30,000 | 1024       | SDXL-1.0-refiner 9.55 (overall; per category too) |

Folder layouts (download them elsewhere; nothing is fetched here)::

    COCO_ROOT/                                  # https://cocodataset.org: 2014 Val images + 2014 Train/Val annotations
      annotations/captions_val2014.json         # {"images": [{"id", "file_name"}], "annotations": [{"image_id", "id", "caption"}]}
      val2014/COCO_val2014_000000000042.jpg     # the <file_name>s listed in the captions file
    MJHQ_ROOT/                                  # hf download playgroundai/MJHQ-30K --repo-type dataset, unzip mjhq30k_imgs.zip
      meta_data.json                            # {"<image_id>": {"category": "animals", "prompt": "..."}, ...}
      mjhq30k_imgs/<category>/<image_id>.jpg

Commands (``evaluation/t2i/run.py`` is the command line over :func:`run_benchmark`)::

    python evaluation/t2i/run.py --benchmark coco30k --data data/coco2014 --checkpoint runs/dmd2-sd15 \\
        --clip models/clip-vit-g-14 --clip-preset dmd2 --out evaluation/results/t2i/sd15-coco30k.json
    python evaluation/t2i/run.py --benchmark coco10k --data data/coco2014 --checkpoint runs/dmd2-sdxl \\
        --pipeline models/sdxl-base --save-images samples/sdxl-coco10k --out results/sdxl-coco10k.json
    python evaluation/t2i/run.py --benchmark mjhq30k --data data/mjhq30k --checkpoint runs/dmd2-sdxl --n 3000
    python evaluation/t2i/run.py --benchmark coco30k --data data/coco2014 --checkpoint runs/x --n 200 --allow-small-n

Protocol details:

* Subset: the captioned image ids sorted ascending, permuted with ``numpy.random.default_rng(subset_seed)``, the
  first N taken (so a smaller N is a prefix of a larger one). COCO images keep the caption with the lowest
  annotation id, stripped. MJHQ uses all 30k entries unless N is lowered. The subset is chosen here: a paper's own
  caption list (where it ships one) may differ, so results match the published protocol (N, resolution, resize,
  features), not caption for caption. The report's ``deviations`` lists where a run leaves the protocol.
* ``images_per_second`` counts sampling and VAE decoding only (text encoding, resizing and features excluded).
* Images, both sides (DMD2's COCO evaluator): centre crop to a square of the short side (torchvision's offset
  rounding), then PIL LANCZOS to the evaluation resolution, uint8. Generated pixels in [-1, 1] become uint8 by
  ``round((x + 1) * 127.5)`` clamped to 0..255, as saving a PNG would; DMD2's own code truncates
  (``.to(torch.uint8)``), at most one level lower.
* Features: clean-fid's ``clean`` Inception (PIL bicubic float resize to 299) unless another extractor is given.
  Reference features are cached in ``cache_dir`` under a key of the benchmark, the selected files, resolution,
  resize and extractor protocol, so the second run reads no real image.
* Noise: the toolkit's one seeding rule (diffdistill/inference/noise.py): image i's starting and re-noising noise
  come from CPU generators keyed by (seed, i, step), so image i is the same at any batch size or N.
* CLIP score (optional, :mod:`.metrics.clip_score` presets): on the same eval-resolution uint8 images and the
  raw prompts (the preset adds its prefix). DMD2 reports ``dmd2`` (raw cosine) with ViT-g-14.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

import numpy as np
import PIL
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from .evaluate import (Reference, check_protocols, check_sample_size, environment, make_extractor, save_json,
                       score_features)
from ..metrics.clip_score import CLIPScoreConfig, CLIPScorer, combine
from ..metrics.extractors import FeatureExtractor, extract_features
from ..metrics.frechet import FeatureStats, frechet_distance
from ..models.registry import find_export, read_export_meta
from ..inference.generate import generate, sync
from ..inference.side_by_side import LoadedModel, PromptConditioner
from ..data.t2i import (BENCHMARKS, GENERATED_TO_UINT8, IMAGE_RESIZE, SELECTION, Benchmark, BenchmarkName, Item,
                       prepare_generated, read_benchmark, reference_batches)

ClipPreset = Literal["dmd2", "torchmetrics", "hessel"]
CLIP_PRESETS = {"dmd2": CLIPScoreConfig.dmd2, "torchmetrics": CLIPScoreConfig.torchmetrics,
                "hessel": CLIPScoreConfig.hessel}


# ----------------------------------------------------------------------------------------------- reference
def reference_protocol(benchmark: Benchmark, items: Sequence[Item], resolution: int, seed: int,
                       extractor: FeatureExtractor) -> dict[str, str]:
    """What the reference features depend on; its hash names the cache file."""
    selected = hashlib.sha256("\n".join(f"{it.key}\t{it.path.name}" for it in items).encode()).hexdigest()
    return {**extractor.protocol(), "benchmark": benchmark.name, "n": str(len(items)), "subset_seed": str(seed),
            "selection": SELECTION, "selection_sha256": selected, "eval_resolution": str(resolution),
            "image_resize": IMAGE_RESIZE, "pillow_image_resize": PIL.__version__}


def cached_reference(benchmark: Benchmark, items: Sequence[Item], resolution: int, seed: int,
                     extractor: FeatureExtractor, cache_dir: str | Path, batch_size: int = 64, device: str = "cpu",
                     workers: int = 8) -> tuple[Reference, Path]:
    """The real images' features, read from ``cache_dir`` when this exact selection and protocol were done before,
    else extracted (streamed: MJHQ at 1024 px does not fit in memory) and saved there."""
    protocol = reference_protocol(benchmark, items, resolution, seed, extractor)
    key = hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()
    path = Path(cache_dir) / f"{benchmark.name}-n{len(items)}-seed{seed}-{resolution}px-{key[:16]}.safetensors"
    if path.is_file():
        reference = Reference.load(path)
        if reference.protocol.get("cache_key") == key:
            check_protocols(reference.protocol, extractor.protocol())
            return reference, path
    feats = extract_features(extractor, reference_batches(items, resolution, batch_size, workers),
                             batch_size=batch_size, device=device)
    reference = Reference.from_features(feats, {**protocol, "cache_key": key})
    partial = path.with_name(path.name + ".part")      # a run killed while writing leaves no half-written cache
    reference.save(partial)
    partial.replace(path)
    return reference, path


# ----------------------------------------------------------------------------------------------- generation
def load_text_model(checkpoint: str | Path, pipeline: str | Path | None,
                    device: torch.device) -> tuple[LoadedModel, PromptConditioner, Path]:
    """An exported text-to-image UNet and the pipeline folder whose text encoders and VAE it samples with."""
    directory = find_export(checkpoint)
    kind = read_export_meta(directory).get("model", {}).get("kind")
    if kind != "unet":
        raise ValueError(f"{str(directory)!r} holds a {kind!r} model; the text-to-image benchmarks sample SD1.5 / "
                         "SDXL UNet exports")
    model = LoadedModel(directory, device)
    if model.conditioning != "text":
        raise ValueError(f"{str(directory)!r} is class-conditional ({model.num_classes} classes); the text-to-image "
                         "benchmarks need a text-conditioned export (an SD1.5 / SDXL student or teacher)")
    folder = pipeline or model.pipeline
    if not folder:
        raise ValueError(f"{str(directory)!r} records no pipeline folder; pass --pipeline (the diffusers SD/SDXL "
                         "folder whose text encoders and VAE the model was trained with)")
    return model, PromptConditioner(folder, device), Path(folder)


@dataclass
class GeneratedBatch:
    """Shapes: images [B, 3, R, R] uint8 at the eval resolution."""

    start: int
    images: Tensor
    items: list[Item]


@torch.no_grad()
def generate_batches(model: LoadedModel, prompts: PromptConditioner, items: Sequence[Item], resolution: int,
                     steps: int, guidance: float, seed: int, batch_size: int,
                     timer: dict[str, float] | None = None) -> Iterator[GeneratedBatch]:
    """One image per item's prompt, decoded and prepared like the real images. ``timer["seconds"]`` accumulates
    the sampling + VAE decoding wall time (text encoding and resizing excluded), synchronised on CUDA."""
    device = next(model.model.parameters()).device
    spec = model.spec.override(model.model.schedule, steps, guidance=guidance)
    timer = timer if timer is not None else {}
    for start in tqdm(range(0, len(items), batch_size), desc=f"sampling {steps} steps", unit="batch", leave=False):
        chunk = list(items[start:start + batch_size])
        cond, uncond = prompts.conds_many([it.prompt for it in chunk], model.model.data_shape)
        # the one sampling path; image i (the item's position) has its own noise, whatever the batch size
        latents, _, seconds = generate(model.model, spec, len(chunk), seed, batch_size=len(chunk), progress=False,
                                       text=cond, uncond=uncond, first=start)
        sync(device)
        begin = time.perf_counter()
        pixels = prompts.decode(latents.to(device))
        sync(device)
        timer["seconds"] = timer.get("seconds", 0.0) + seconds + time.perf_counter() - begin
        yield GeneratedBatch(start, prepare_generated(pixels, resolution), chunk)


def save_batch(batch: GeneratedBatch, folder: Path, total: int) -> None:
    """PNGs named by prompt index (sorted order = prompt order) and one prompts.jsonl line per image."""
    width = max(5, len(str(total - 1)))
    with (folder / "prompts.jsonl").open("a") as f:
        for i, (image, item) in enumerate(zip(batch.images, batch.items), start=batch.start):
            name = f"{i:0{width}d}_{item.key}.png"
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / name)
            f.write(json.dumps({"file": name, "key": item.key, "prompt": item.prompt, "category": item.category})
                    + "\n")


# ----------------------------------------------------------------------------------------------- the run
@dataclass
class T2IConfig:
    """One benchmark run. ``n``/``resolution``/``steps``/``guidance``/``pipeline`` None = the benchmark's or the
    export's own. ``guidance`` is the standard CFG form ``uncond + w (cond - uncond)``."""

    benchmark: BenchmarkName
    data: str
    checkpoint: str
    pipeline: str | None = None
    n: int | None = None
    resolution: int | None = None
    subset_seed: int = 0            # part of the benchmark: which captions; changing it changes the reference
    seed: int = 0                   # the generation noise
    steps: int | None = None
    guidance: float | None = None
    batch_size: int = 16
    clip: str | None = None         # a transformers CLIP folder; None = no CLIP score
    clip_preset: ClipPreset = "dmd2"
    inception: str | None = None    # Inception weights file (default: $DIFFDISTILL_INCEPTION, cache, download)
    offline: bool = False
    cache_dir: str = str(Path.home() / ".cache" / "diffdistill" / "t2i")
    save_images: str | None = None
    out: str | None = None
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    workers: int = 8                # threads reading real images
    allow_small_n: bool = False
    precision_recall: bool = False  # k-NN over all pairs: slow at 30k

    def validate(self) -> Benchmark:
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {self.benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
        for name in ("n", "resolution", "batch_size", "steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.clip and self.clip_preset not in CLIP_PRESETS:
            raise ValueError(f"unknown CLIP preset {self.clip_preset!r}; choose one of {', '.join(CLIP_PRESETS)}")
        return BENCHMARKS[self.benchmark]


def run_benchmark(config: T2IConfig, extractor: FeatureExtractor | None = None,
                  clip: CLIPScorer | None = None) -> dict:
    """Run one benchmark end to end and return (and with ``config.out``, write) the JSON report. ``extractor`` /
    ``clip`` replace the default Inception / the CLIP model loaded from ``config.clip`` (tests, other features)."""
    benchmark = config.validate()
    resolution = config.resolution or benchmark.resolution
    items = read_benchmark(benchmark, config.data, config.n, config.subset_seed)   # bad data fails in a second
    device = torch.device(config.device)
    model, prompts, pipeline = load_text_model(config.checkpoint, config.pipeline, device)
    steps, guidance = _sampling_settings(model, config)
    save_dir = _fresh_image_folder(config.save_images)        # before the slow parts, like every input check
    extractor = extractor or make_extractor("inception", None, config.device, config.inception, not config.offline)
    if clip is None and config.clip:
        clip = CLIPScorer(CLIP_PRESETS[config.clip_preset](config.clip), device=config.device)
    reference, ref_path = cached_reference(benchmark, items, resolution, config.subset_seed, extractor,
                                           config.cache_dir, config.batch_size, config.device, config.workers)
    check_sample_size(len(items), reference.features.shape[1], config.allow_small_n)     # before sampling N images
    wall = time.perf_counter()
    features, cosines, seconds = _sample_and_measure(model, prompts, items, resolution, steps, guidance, config,
                                                     extractor, clip, save_dir)
    report: dict = {"benchmark": benchmark.name, "n": len(items),
                    "deviations": deviations(benchmark, len(items), resolution, config.subset_seed),
                    **score_features(features, reference, with_pr=config.precision_recall)}
    if clip is not None:
        report["clip_score"] = combine(cosines, clip.config.scale, clip.config.clamp).score
    if benchmark.dataset == "mjhq30k":
        report["per_category"] = per_category_fid(features, reference.features, [it.category for it in items],
                                                  config.allow_small_n)
    report.update(images_per_second=len(items) / max(seconds, 1e-9), sampling_seconds=round(seconds, 3),
                  # sampling + decoding + resizing + features + CLIP + saving: what a run of N costs, references aside
                  generate_and_score_seconds=round(time.perf_counter() - wall, 3),
                  images=str(save_dir) if save_dir else None)
    report["protocol"] = {
        "benchmark": {**asdict(benchmark), "n": len(items), "subset_seed": config.subset_seed,
                      "selection": SELECTION, "data": str(config.data)},
        "images": {"eval_resolution": resolution, "resize": IMAGE_RESIZE, "generated_to_uint8": GENERATED_TO_UINT8},
        "features": extractor.protocol(),
        "reference": {"file": str(ref_path), "n": reference.stats.n,
                      "selection_sha256": reference.protocol.get("selection_sha256")},
        "clip": clip.protocol() if clip is not None else None,
        "sampler": _sampler_protocol(model, pipeline, steps, guidance, config)}
    report["environment"] = {**environment(), **_versions("diffusers", "transformers", "pillow", "numpy")}
    if config.out:
        save_json(report, config.out)
    return report


def _sample_and_measure(model: LoadedModel, prompts: PromptConditioner, items: Sequence[Item], resolution: int,
                        steps: int, guidance: float, config: T2IConfig, extractor: FeatureExtractor,
                        clip: CLIPScorer | None, save_dir: Path | None) -> tuple[Tensor, Tensor, float]:
    """Features [N, D] and CLIP cosines [N] (empty without CLIP) of the generated images, and the sampling seconds.
    Measured batch by batch: 30k generated images at 1024 px would not fit in memory."""
    feats, cosines, timer = [], [torch.zeros(0)], {}
    for batch in generate_batches(model, prompts, items, resolution, steps, guidance, config.seed,
                                  config.batch_size, timer):
        feats.append(extract_features(extractor, batch.images, config.batch_size, config.device, progress=False))
        if clip is not None:
            cosines.append(clip.cosines(batch.images, [it.prompt for it in batch.items]))
        if save_dir is not None:
            save_batch(batch, save_dir, len(items))
    return torch.cat(feats), torch.cat(cosines), timer.get("seconds", 0.0)


def deviations(benchmark: Benchmark, n: int, resolution: int, subset_seed: int) -> list[str]:
    """Where a run leaves the published protocol: its numbers are then not comparable with the anchors."""
    out = [f"n {n} instead of {benchmark.n}"] if n != benchmark.n else []
    if resolution != benchmark.resolution:
        out.append(f"resolution {resolution} instead of {benchmark.resolution}")
    if subset_seed != 0 and benchmark.dataset == "coco2014":
        out.append(f"subset seed {subset_seed} instead of 0")
    return out


def per_category_fid(features: Tensor, reference: Tensor, categories: Sequence[str],
                     allow_small_n: bool = False) -> dict[str, dict]:
    """FID of each category's generated images against the same category's real images (MJHQ-30k: 3k each).
    A category with no more samples than feature dimensions gets a note instead of a number, as
    ``check_sample_size`` would refuse it (with ``allow_small_n`` the biased number is given with the note)."""
    out: dict[str, dict] = {}
    labels = np.asarray(categories)
    for name in sorted(set(categories)):
        mask = torch.from_numpy(labels == name)
        n = int(mask.sum())
        entry: dict = {"n": n, "fid": None}
        try:
            check_sample_size(n, features.shape[1], allow_small=False)
        except ValueError as err:
            entry["skipped" if n < 2 or not allow_small_n else "note"] = str(err).split(";")[0]
        if "skipped" not in entry:
            entry["fid"] = frechet_distance(FeatureStats.from_features(features[mask]),
                                            FeatureStats.from_features(reference[mask]))
        out[name] = entry
    return out


def _sampler_protocol(model: LoadedModel, pipeline: Path, steps: int, guidance: float, config: T2IConfig) -> dict:
    spec = model.spec.override(model.model.schedule, steps, guidance=guidance)
    return {"checkpoint": str(model.directory), "pipeline": str(pipeline), "sampler": spec.sampler,
            "steps": spec.steps, "times": list(spec.times), "guidance": spec.guidance,
            "cfg_form": "uncond + w (cond - uncond)", "nfe": spec.nfe, "seed": config.seed,
            "batch_size": config.batch_size,
            "noise": "per image: CPU generators keyed by (seed, image index, step) (diffdistill/inference/noise.py)"}


def _sampling_settings(model: LoadedModel, config: T2IConfig) -> tuple[int, float]:
    """Steps and guidance: the export's unless overridden. A distilled student samples only its trained times,
    so another step count is refused rather than silently ignored."""
    steps = config.steps or model.default_steps
    if model.distilled and steps not in model.step_choices:
        raise ValueError(f"{str(model.directory)!r} is a distilled student trained for {model.step_choices[0]} "
                         f"steps; --steps {steps} is not on its schedule")
    guidance = model.default_guidance if config.guidance is None else float(config.guidance)
    return steps, guidance


def _fresh_image_folder(folder: str | None) -> Path | None:
    if not folder:
        return None
    path = Path(folder)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"--save-images folder {path} is not empty; pick a new folder (the images of two runs "
                              "would mix)")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _versions(*packages: str) -> dict[str, str]:
    out = {}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
