"""``diffdistill eval``: FID / KID / precision-recall of a folder of images or of a model's samples against
reference features, with the full protocol recorded next to every number.

    diffdistill eval ref --images data/coco-val-512 --out refs/coco.safetensors        # reference features once
    diffdistill eval --images samples/ --ref refs/coco.safetensors                    # a folder of images
    diffdistill eval --checkpoint runs/dmd2-fmnist-1step --n 10000 --features fmnist  # a model, sampled here

A reference file (safetensors) holds the features (for KID and precision/recall, which need the sets, not just
their Gaussians), their mean/covariance and, in its metadata, the extractor protocol. ``eval`` refuses to compare
against a reference made with another protocol (other network, weights, resize or resolution): mixing them is the
most common way FIDs stop being comparable (Parmar et al., arXiv:2104.11222).
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from ..inference.spec import SAMPLERS
from ..metrics.extractors import FeatureExtractor, FMNISTExtractor, InceptionExtractor, extract_features
from ..metrics.fmnist import ASSETS as FMNIST_ASSETS
from ..metrics.frechet import FeatureStats, frechet_distance
from ..metrics.kid import kid
from ..metrics.manifold import precision_recall

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FEATURES = ("inception", "inception-legacy", "fmnist")
# protocol fields that must agree between a reference and the evaluated set (versions may differ)
_MATCHED = ("extractor", "features", "resize", "resolution", "weights_sha256")


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name. Raises with the fix for missing/empty folders."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}; point --images at the folder that "
                         "holds the files themselves (sub-folders are not searched)")
    return files


def load_images(files: list[Path], limit: int | None = None) -> Tensor:
    """uint8 [N, C, H, W] (C = 1 for grey files, 3 otherwise; alpha dropped). All files must share one size:
    resizing here would change the protocol, so mixed sizes are an error that names two offending files."""
    files = files[:limit] if limit else files
    images, first = [], None
    for path in tqdm(files, desc="reading images", unit="img", leave=False):
        with Image.open(path) as im:
            im = im.convert("L") if im.mode in ("L", "I;16", "1", "LA") else im.convert("RGB")
            if first is None:
                first = (path, im.size, im.mode)
            elif (im.size, im.mode) != first[1:]:
                raise ValueError(f"images differ in size or colour: {first[0].name} is {first[1]} {first[2]}, "
                                 f"{path.name} is {im.size} {im.mode}; resize them to one size first (and say how "
                                 "in your results: the resize is part of the FID protocol)")
            array = np.asarray(im)
        images.append(torch.from_numpy(array.copy()))
    x = torch.stack(images)
    return x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()


def make_extractor(name: str, value_range: str | None, device: str, inception: str | None = None,
                   download: bool = True, allow_unverified: bool = False) -> FeatureExtractor:
    """``inception`` (clean-fid clean), ``inception-legacy`` (pytorch-fid) or ``fmnist`` (benchmark B1).
    ``allow_unverified``: score with an Inception file whose SHA-256 is not the published one (warned)."""
    if name == "fmnist":
        return FMNISTExtractor(FMNIST_ASSETS, device=device)
    if name in ("inception", "inception-legacy"):
        mode = "clean" if name == "inception" else "legacy"
        return InceptionExtractor(mode, value_range, path=inception, device=device, download=download,
                                  allow_unverified=allow_unverified)
    raise ValueError(f"unknown feature extractor {name!r}; choose one of {', '.join(FEATURES)}")


def as_extractor_input(images: Tensor, features: str) -> Tensor:
    """The Fashion-MNIST classifier takes [N, 1, 32, 32] in [-1, 1]: uint8 files are scaled and 28 px padded with
    background, as the data module does. Inception extractors take images as they are (their resize handles it)."""
    if features != "fmnist":
        return images
    if images.shape[1] != 1:
        raise ValueError(f"the fmnist extractor takes grey images, got {images.shape[1]} channels")
    x = images.float().div(127.5).sub(1.0) if images.dtype == torch.uint8 else images.float()
    pad = (32 - x.shape[-1]) // 2
    if x.shape[-2:] not in ((28, 28), (32, 32)):
        raise ValueError(f"the fmnist extractor takes 28x28 or 32x32 images, got {tuple(x.shape[-2:])}")
    return torch.nn.functional.pad(x, (pad,) * 4, value=-1.0) if pad > 0 else x


@dataclass
class Reference:
    """Reference features [N, D], their Gaussian and the protocol they were made with."""

    features: Tensor
    stats: FeatureStats
    protocol: dict[str, str]

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"features": self.features.float().contiguous(), "mu": self.stats.mu.contiguous(),
                   "sigma": self.stats.sigma.contiguous(), "n": torch.tensor([self.stats.n])}, str(path),
                  metadata={"protocol": json.dumps(self.protocol, sort_keys=True)})

    @classmethod
    def load(cls, path: str | Path) -> "Reference":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"reference file {path} does not exist; make it with `diffdistill eval ref "
                                    "--images REAL_FOLDER --out FILE`")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if "protocol" not in meta:
                raise ValueError(f"{path} is not a diffdistill reference file (no protocol in its metadata)")
            t = {k: f.get_tensor(k) for k in f.keys()}
        stats = FeatureStats(t["mu"].double(), t["sigma"].double(), int(t["n"][0]))
        return cls(t["features"], stats, json.loads(meta["protocol"]))

    @classmethod
    def from_features(cls, features: Tensor, protocol: dict[str, str]) -> "Reference":
        return cls(features, FeatureStats.from_features(features), protocol)


def check_protocols(reference: dict[str, str], current: dict[str, str]) -> None:
    """Raise when a field that changes feature values differs between the reference and the evaluated set."""
    diffs = [f"{k}: reference {reference.get(k)!r} vs now {current.get(k)!r}" for k in _MATCHED
             if reference.get(k) != current.get(k)]
    if diffs:
        raise ValueError("the reference was made with another feature protocol, so the distances would not mean "
                         "anything: " + "; ".join(diffs) + ". Rebuild it with `diffdistill eval ref` and the "
                         "same --features/--inception")


def check_sample_size(n: int, dim: int, allow_small: bool) -> None:
    """N <= D leaves the covariance singular: FID is then strongly biased (and other tools return NaN or complex
    numbers). Say so rather than print a number that looks like any other FID."""
    if n < 2:
        raise ValueError(f"need at least 2 images, got {n}")
    if n <= dim and not allow_small:
        raise ValueError(f"{n} images for {dim}-d features: the covariance is singular and FID meaningless; use "
                         f"more than {dim} images (the protocols use 10k-50k) or pass --allow-small-n to get the "
                         "biased number anyway")


def score_features(features: Tensor, reference: Reference, kid_subset: int = 1000, k: int = 3,
                   with_pr: bool = True) -> dict[str, float]:
    """FID, KID (mean, std over subsets) and improved precision/recall of ``features`` against ``reference``."""
    result: dict[str, float] = {
        "fid": frechet_distance(FeatureStats.from_features(features), reference.stats)}
    subset = min(kid_subset, features.shape[0], reference.features.shape[0])
    if subset >= 2:
        k_res = kid(reference.features, features, subsets=100, subset_size=subset)
        result.update(kid_mean=k_res.mean, kid_std=k_res.std, kid_subset_size=subset)
    if with_pr and min(features.shape[0], reference.features.shape[0]) > k:
        pr = precision_recall(reference.features, features, k=k)
        result.update(precision=pr.precision, recall=pr.recall, pr_k=k)
    return result


def environment() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def features_of(images: Tensor, extractor: FeatureExtractor, features: str, batch_size: int, device: str,
                cache: str | None = None) -> Tensor:
    """Batched features (with progress bar and optional cache) of images in their source format."""
    return extract_features(extractor, as_extractor_input(images, features), batch_size=batch_size, device=device,
                            cache_path=cache)


def save_json(report: dict, path: str | Path | None) -> str:
    text = json.dumps(report, indent=2)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    return text


# ----------------------------------------------------------------------------------------------- commands
def reference_images(args) -> tuple[Tensor, str]:
    """The real images for ``eval ref``: a folder, or the Fashion-MNIST test split (benchmark B1)."""
    if args.dataset == "fmnist-test":
        from ..data import load_fashion_mnist
        images, _ = load_fashion_mnist("test")
        return torch.from_numpy(np.array(images))[:, None][: args.limit or None], "fmnist-test"
    if not args.images:
        raise ValueError("eval ref needs --images FOLDER (real images) or --dataset fmnist-test")
    return load_images(image_files(args.images), args.limit), str(args.images)


def run_ref(args) -> dict:
    images, source = reference_images(args)
    extractor = make_extractor(args.features, None, args.device, args.inception, not args.offline,
                               args.allow_unverified_inception)
    feats = features_of(images, extractor, args.features, args.batch_size, args.device)
    ref = Reference.from_features(feats, {**extractor.protocol(), "source": source, "n": str(feats.shape[0])})
    ref.save(args.out)
    return {"reference": str(args.out), "n": feats.shape[0], "dim": feats.shape[1], "protocol": ref.protocol}


def sample_checkpoint(args) -> tuple[Tensor, Tensor | None, dict]:
    """N samples of an exported model with its own sampling settings (overridable), float in [-1, 1]."""
    from ..inference.generate import generate, user_spec
    from ..models.registry import find_export, load_model

    directory = find_export(args.checkpoint)
    model = load_model(directory).eval().to(args.device)
    plan = user_spec(directory, model, args.steps, args.sampler, args.guidance, args.off_schedule, args.eta)
    samples, labels, seconds = generate(model, plan, args.n, seed=args.seed, batch_size=args.batch_size)
    info = {"checkpoint": str(directory), "sampler": plan.sampler, "steps": plan.steps, "nfe": plan.nfe,
            "guidance": plan.guidance, "seed": args.seed, "sampling_seconds": round(seconds, 3)}
    if plan.sampler == "tcd":
        info["eta"] = plan.eta
    return samples.clamp(-1, 1), labels, info


def run_eval(args) -> dict:
    if bool(args.images) == bool(args.checkpoint):
        raise ValueError("eval needs exactly one of --images FOLDER or --checkpoint RUN_OR_EXPORT")
    reference = _reference_for(args)          # before sampling or reading: a bad --ref fails in a second
    labels = None
    if args.images:
        images, value_range, source = load_images(image_files(args.images), args.limit), None, {"images": args.images}
    else:
        images, labels, source = sample_checkpoint(args)
        value_range = "-1..1"
    extractor = make_extractor(args.features, value_range, args.device, args.inception, not args.offline,
                               args.allow_unverified_inception)
    check_protocols(reference.protocol, extractor.protocol())
    feats = features_of(images, extractor, args.features, args.batch_size, args.device, args.feature_cache)
    check_sample_size(feats.shape[0], feats.shape[1], args.allow_small_n)
    report = {**source, "n": feats.shape[0], **score_features(feats, reference, with_pr=not args.no_pr)}
    if labels is not None and args.features == "fmnist":
        scores = extractor.evaluator.score(as_extractor_input(images, "fmnist"), labels)   # B1's class metrics
        report.update(class_accuracy=scores.accuracy, diversity=scores.diversity)
    report["protocol"] = {**extractor.protocol(), "reference": reference.protocol.get("source", str(args.ref)),
                          "reference_n": reference.stats.n}
    report["environment"] = environment()
    return report


def _reference_for(args) -> Reference:
    if args.ref:
        return Reference.load(args.ref)
    if args.features == "fmnist":     # B1's reference: the 10k test images, computed once and cached
        cache = Path(args.cache_dir) / "fmnist-test-reference.safetensors"
        if not cache.is_file():
            run_ref(_RefArgs(args.features, args.device, args.inception, args.offline, args.batch_size, cache,
                             allow_unverified_inception=args.allow_unverified_inception))
        return Reference.load(cache)
    raise ValueError("--ref REFERENCE_FILE is needed for Inception features; make one with `diffdistill eval "
                     "ref --images REAL_FOLDER --out FILE`")


@dataclass
class _RefArgs:
    features: str
    device: str
    inception: str | None
    offline: bool
    batch_size: int
    out: Path
    dataset: str = "fmnist-test"
    images: str | None = None
    limit: int | None = None
    allow_unverified_inception: bool = False


def add_parsers(sub) -> None:
    """``eval`` and ``eval ref`` on the CLI's subparsers (argparse takes ``ref`` as the first positional)."""
    e = sub.add_parser("eval", help="FID/KID/precision-recall of an image folder or a model's samples (JSON); "
                                    "`diffdistill eval ref` builds reference features")
    e.add_argument("action", nargs="?", choices=["ref"], help="ref: build a reference file from real images")
    e.add_argument("--images", help="a folder of images (eval: generated; ref: real)")
    e.add_argument("--checkpoint", help="eval: a run dir or export dir to sample with its own settings")
    e.add_argument("--dataset", choices=["fmnist-test"], help="ref: the Fashion-MNIST test split instead of a folder")
    e.add_argument("--ref", help="eval: reference file (default for --features fmnist: the test split)")
    e.add_argument("--out", help="ref: the reference file to write; eval: also write the JSON report here")
    e.add_argument("--features", choices=FEATURES, default="inception")
    e.add_argument("--inception", help="Inception weights file (default: $DIFFDISTILL_INCEPTION, cache, download)")
    e.add_argument("--offline", action="store_true", help="never download weights")
    e.add_argument("--allow-unverified-inception", action="store_true",
                   help="score with an Inception file whose SHA-256 is not the published one (scores will not "
                        "match published FIDs); refused without this flag")
    e.add_argument("--n", type=int, default=10_000, help="samples to draw from --checkpoint")
    e.add_argument("--steps", type=int, help="override the model's sampling steps")
    e.add_argument("--sampler", choices=SAMPLERS)
    e.add_argument("--eta", type=float, default=None, help="tcd sampler: stochasticity in [0, 1] (default: the export's)")
    e.add_argument("--off-schedule", action="store_true",
                   help="allow --steps / --sampler other than a distilled student's own (it was not trained for them)")
    e.add_argument("--guidance", type=float)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--limit", type=int, help="use only the first N images of a folder")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    e.add_argument("--feature-cache", help="safetensors file caching the evaluated set's features")
    e.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "diffdistill"))
    e.add_argument("--allow-small-n", action="store_true", help="report FID even when N <= feature dimension")
    e.add_argument("--no-pr", action="store_true", help="skip precision/recall (k-NN over all pairs)")
    e.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    if args.action == "ref":
        if not args.out:
            raise ValueError("eval ref needs --out FILE.safetensors")
        print(save_json(run_ref(args), None))
        return 0
    print(save_json(run_eval(args), args.out))
    return 0
