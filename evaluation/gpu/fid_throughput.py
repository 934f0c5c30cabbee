"""Benchmark B4, FID throughput: our clean-mode FID pipeline against clean-fid on the same image files and the same
Inception weights, in one run: images/s of each (files -> features), the features' largest difference and both FIDs.

    pip install clean-fid          # needs torchvision: the GPU machine has it, our build machines cannot
    python evaluation/gpu/fid_throughput.py --n 5000 --size 512 --out evaluation/results

No weights can be downloaded on the GPU machine, so unless ``--inception`` names the published
inception-2015-12-05.pt, both pipelines run the same random-weight Inception, written in clean-fid's file layout
(:func:`diffdistill.metrics.inception.save_clean_fid_layout`): speed does not depend on the weights' values, and
agreement then checks everything else (file reading, resize, network, statistics). The images are synthetic
(smooth random colour fields with edges), written as PNG files first. Ours runs as `diffdistill eval` does: read
every file, clean resize on the CPU, the network in batches on the device; clean-fid runs its DataLoader with
``--workers`` processes. Writes <out>/gpu-fid-throughput.json with the device name and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffdistill.eval.evaluate import environment, image_files, load_images
from diffdistill.metrics.extractors import InceptionExtractor, extract_features
from diffdistill.metrics.frechet import FeatureStats, frechet_distance
from diffdistill.metrics.inception import random_inception, save_clean_fid_layout
from diffdistill.inference.generate import sync


def synthetic_folder(folder: Path, n: int, size: int, seed: int) -> Path:
    """``n`` RGB PNGs of ``size`` px: 16 x 16 random colours upsampled bicubically, with a hard stripe every 8 rows
    (sharp edges exercise the resize's clipping)."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, n, 256):
        low = torch.rand(min(256, n - start), 3, 16, 16, generator=gen) * 255
        images = F.interpolate(low, size=size, mode="bicubic", align_corners=False).clamp(0, 255).round()
        images[:, :, ::8] = 0
        for i, im in enumerate(images.to(torch.uint8)):
            Image.fromarray(im.permute(1, 2, 0).numpy()).save(folder / f"{start + i:06d}.png")
    return folder


def ours(folder: Path, weights: Path, device: str, batch_size: int) -> tuple[np.ndarray, float]:
    extractor = InceptionExtractor("clean", path=weights, device=device, download=False)
    sync(torch.device(device))
    start = time.perf_counter()
    features = extract_features(extractor, load_images(image_files(folder)), batch_size=batch_size, device=device,
                                progress=False)
    sync(torch.device(device))
    return features.double().numpy(), time.perf_counter() - start


def theirs(folder: Path, weights: Path, device: str, batch_size: int, workers: int) -> tuple[np.ndarray, float]:
    from cleanfid import fid
    from cleanfid.inception_torchscript import InceptionV3W

    model = InceptionV3W(str(weights.parent), download=False, resize_inside=False).to(device).eval()
    sync(torch.device(device))
    start = time.perf_counter()
    features = fid.get_folder_features(str(folder), model, num_workers=workers, batch_size=batch_size,
                                       device=torch.device(device), mode="clean", verbose=False)
    sync(torch.device(device))
    return features.astype(np.float64), time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000, help="images per folder (two folders)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--workers", type=int, default=8, help="clean-fid DataLoader workers")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--inception", help="the published inception-2015-12-05.pt (default: random weights)")
    p.add_argument("--work", help="folder for the images and weights (default: a temporary one)")
    p.add_argument("--out", default="evaluation/results")
    args = p.parse_args()
    try:
        import cleanfid  # noqa: F401
    except ImportError as e:
        raise SystemExit("clean-fid is not installed: `pip install clean-fid` (it needs torchvision)") from e
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        weights = (Path(args.inception) if args.inception
                   else save_clean_fid_layout(random_inception(seed=7), work / "weights" / "inception-2015-12-05.pt"))
        folders = [synthetic_folder(work / name, args.n, args.size, seed) for name, seed in (("a", 0), ("b", 1))]
        ours(folders[0], weights, args.device, args.batch_size)            # warm-up: kernels, allocator, page cache
        mine = [ours(f, weights, args.device, args.batch_size) for f in folders]
        ref = [theirs(f, weights, args.device, args.batch_size, args.workers) for f in folders]
    from cleanfid import fid

    stats = [FeatureStats.from_features(torch.from_numpy(f)) for f, _ in mine]
    ours_fid = frechet_distance(*stats)
    ref_fid = float(fid.frechet_distance(ref[0][0].mean(0), np.cov(ref[0][0], rowvar=False),
                                         ref[1][0].mean(0), np.cov(ref[1][0], rowvar=False)))
    ours_ips = 2 * args.n / sum(t for _, t in mine)
    ref_ips = 2 * args.n / sum(t for _, t in ref)
    result = {"benchmark": "B4 FID throughput vs clean-fid",
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine(),
              "environment": environment(), "n_per_folder": args.n, "image_size": args.size,
              "batch_size": args.batch_size, "clean_fid_workers": args.workers,
              "weights": "published" if args.inception else "random (same file for both)",
              "ours_images_per_s": round(ours_ips, 2), "clean_fid_images_per_s": round(ref_ips, 2),
              "speed_ratio_ours_over_clean_fid": round(ours_ips / ref_ips, 3),
              "max_abs_feature_difference": max(float(np.abs(a - b).max()) for (a, _), (b, _) in zip(mine, ref)),
              "fid_ours": ours_fid, "fid_clean_fid": ref_fid, "fid_relative_difference": abs(ours_fid - ref_fid) / ref_fid}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-fid-throughput.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=2))


if __name__ == "__main__":
    main()
