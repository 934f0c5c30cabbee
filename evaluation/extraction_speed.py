"""Feature-extraction speed: our batched pipeline against a one-image-at-a-time loop, on the same images, in one run.

    python evaluation/extraction_speed.py --n 256 --size 256 --out evaluation/results/eval_speed

Extractors: the FID Inception in clean-fid's protocol (PIL-bicubic float resize to 299, then the network) and the
Fashion-MNIST evaluator (benchmark B1's FID-FMNIST features). Speed does not depend on the weights' values, so the
Inception runs with random weights unless ``--inception`` names the real file (none can be downloaded on the build
machines). Both paths must give the same features (checked, max abs difference reported): batching may only change
the speed. Writes <out>/extraction_speed.json and .md; images/s ratios are the numbers to quote, absolute images/s
only with the device named in the report.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffdistill.eval.evaluate import environment
from diffdistill.metrics.extractors import FeatureExtractor, FMNISTExtractor, InceptionExtractor, extract_features
from diffdistill.metrics.inception import InceptionNetwork, random_inception
from diffdistill.inference.generate import sync


def inception_extractor(path: str | None, device: str) -> InceptionExtractor:
    if path:
        return InceptionExtractor("clean", path=path, device=device, download=False)
    network = InceptionNetwork(random_inception(), "clean", Path("random-weights"), "random").requires_grad_(False)
    return InceptionExtractor("clean", network=network, device=device)


def time_batched(extractor: FeatureExtractor, images: Tensor, batch_size: int, device: str) -> tuple[Tensor, float]:
    sync(torch.device(device))
    start = time.perf_counter()
    features = extract_features(extractor, images, batch_size=batch_size, device=device)
    sync(torch.device(device))
    return features, time.perf_counter() - start


@torch.no_grad()
def time_one_at_a_time(extractor: FeatureExtractor, images: Tensor, device: str) -> tuple[Tensor, float]:
    """The loop people write first: one image per call."""
    extractor.to(device)
    sync(torch.device(device))
    start = time.perf_counter()
    out = [extractor(images[i:i + 1]).cpu() for i in tqdm(range(images.shape[0]), desc="one at a time", leave=False)]
    sync(torch.device(device))
    return torch.cat(out), time.perf_counter() - start


def measure(name: str, extractor: FeatureExtractor, images: Tensor, batch_size: int, device: str) -> dict:
    extractor(images[:2].to(device) if device != "cpu" else images[:2])     # warm-up (allocator, kernels)
    batched, t_batched = time_batched(extractor, images, batch_size, device)
    single, t_single = time_one_at_a_time(extractor, images, device)
    n = images.shape[0]
    return {"extractor": name, "n": n, "input": list(images.shape[1:]), "batch_size": batch_size,
            "batched_images_per_s": round(n / t_batched, 2), "one_at_a_time_images_per_s": round(n / t_single, 2),
            "speedup": round(t_single / t_batched, 2),
            "max_abs_feature_difference": float((batched - single).abs().max()),
            "feature_scale": float(single.abs().mean())}


def markdown(report: dict) -> str:
    lines = [f"# Feature extraction: batched vs one image at a time ({report['environment']['device']}, "
             f"{report['threads']} threads)", "",
             "| extractor | input | N | batch | batched img/s | one-at-a-time img/s | speed-up | max feature diff |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['extractor']} | {'x'.join(map(str, r['input']))} | {r['n']} | {r['batch_size']} | "
                     f"{r['batched_images_per_s']} | {r['one_at_a_time_images_per_s']} | {r['speedup']}x | "
                     f"{r['max_abs_feature_difference']:.2e} |")
    lines += ["", f"Command: `{report['command']}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256, help="images per extractor")
    p.add_argument("--size", type=int, default=256, help="side of the (RGB) images fed to the Inception")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--inception", help="the real inception-2015-12-05.pt (default: random weights)")
    p.add_argument("--out", default="evaluation/results/eval_speed")
    args = p.parse_args()
    gen = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (args.n, 3, args.size, args.size), generator=gen, dtype=torch.uint8)
    grey = torch.rand(args.n, 1, 32, 32, generator=gen) * 2 - 1
    rows = [measure("inception-clean", inception_extractor(args.inception, args.device), rgb, args.batch_size,
                    args.device),
            measure("fmnist-classifier", FMNISTExtractor(device=args.device), grey, args.batch_size, args.device)]
    for r in rows:
        print(json.dumps(r))
    report = {"command": "python evaluation/extraction_speed.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "device"),
              "threads": torch.get_num_threads(), "inception_weights": args.inception or "random (speed only)",
              "environment": environment(), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "extraction_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "extraction_speed.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
