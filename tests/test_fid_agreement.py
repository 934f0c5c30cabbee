"""Agreement with the reference FID implementations on the same image files: clean-fid ("clean" mode) and
pytorch-fid. Both need torchvision, which has no CPU build on our build machines, so these run where it exists
(the GPU machine): ``pip install clean-fid pytorch-fid`` there, then ``pytest -m gpu tests/test_fid_agreement.py``.

No weights can be downloaded there either, so every implementation runs the *same random-weight* Inception: ours
saved as clean-fid's torchscript file (NVIDIA's layout, a ``layers`` trunk) and as pytorch-fid's state dict under
its published name in the torch hub cache. Agreement then tests everything but the weights values: file reading,
resize, normalisation, network structure, statistics and the Fréchet distance.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from diffdistill.eval.evaluate import image_files, load_images
from diffdistill.metrics.extractors import InceptionExtractor, extract_features
from diffdistill.metrics.frechet import FeatureStats, frechet_distance
from diffdistill.metrics.inception import WEIGHTS, random_inception, save_clean_fid_layout
from diffdistill.metrics.resize import clean_resize

pytestmark = pytest.mark.gpu
N = 2100            # more images than the 2048 feature dimensions: full-rank covariances, a well-defined FID
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def write_images(folder: Path, n: int, seed: int, brightness: float) -> Path:
    """n smooth random RGB images (8 x 8 noise upsampled to 64 x 64) with sharp-ish edges, as PNG files."""
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=gen) * 255 * brightness
    images = F.interpolate(low, size=64, mode="bicubic", align_corners=False).clamp(0, 255).round().to(torch.uint8)
    for i, im in enumerate(images):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fid-agreement")
    return write_images(root / "a", N, seed=0, brightness=1.0), write_images(root / "b", N, seed=1, brightness=0.8)


@pytest.fixture(scope="module")
def trunk() -> nn.Module:
    return random_inception(seed=7)


def ours(folder: Path, mode: str, weights: Path) -> Tensor:
    extractor = InceptionExtractor(mode, path=weights, device=DEVICE, download=False)
    return extract_features(extractor, load_images(image_files(folder)), batch_size=100, device=DEVICE,
                            progress=False).double()


def our_fid(features_a: Tensor, features_b: Tensor) -> float:
    return frechet_distance(FeatureStats.from_features(features_a), FeatureStats.from_features(features_b))


def test_clean_resize_equals_clean_fid_resizer():
    resize = pytest.importorskip("cleanfid.resize")
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (3, 3, 40, 56), generator=gen, dtype=torch.uint8)
    images[:, :, ::2] = 0                                           # sharp edges: bicubic rings past 0..255
    theirs = np.stack([resize.build_resizer("clean")(im.permute(1, 2, 0).numpy()) for im in images])
    assert torch.equal(clean_resize(images), torch.from_numpy(theirs).permute(0, 3, 1, 2))


def test_clean_mode_matches_clean_fid(folders, trunk, tmp_path):
    fid = pytest.importorskip("cleanfid.fid")
    from cleanfid.inception_torchscript import InceptionV3W

    weights = tmp_path / WEIGHTS["clean"].name
    save_clean_fid_layout(trunk, weights)
    model = InceptionV3W(str(tmp_path), download=False, resize_inside=False).to(DEVICE).eval()
    theirs = [fid.get_folder_features(str(f), model, num_workers=0, batch_size=100, device=torch.device(DEVICE),
                                      mode="clean", verbose=False) for f in folders]
    mine = [ours(f, "clean", weights) for f in folders]
    for a, b in zip(mine, theirs):
        assert torch.allclose(a, torch.from_numpy(b).double(), rtol=1e-3, atol=1e-3)
    reference = fid.frechet_distance(theirs[0].mean(0), np.cov(theirs[0], rowvar=False),
                                     theirs[1].mean(0), np.cov(theirs[1], rowvar=False))
    assert our_fid(*mine) == pytest.approx(float(reference), rel=1e-3)


def test_legacy_mode_matches_pytorch_fid(folders, trunk, tmp_path, monkeypatch):
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    # pytorch-fid fetches its weights through torch.hub: put ours in the hub cache under the published file name
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = tmp_path / "torch" / "hub" / "checkpoints" / WEIGHTS["legacy"].name
    weights.parent.mkdir(parents=True)
    torch.save(trunk.state_dict(), weights)
    reference = fid_score.calculate_fid_given_paths([str(f) for f in folders], batch_size=100, device=DEVICE,
                                                    dims=2048, num_workers=0)
    with pytest.warns(UserWarning, match="not the published weights"):     # random weights under that name
        mine = [ours(f, "legacy", weights) for f in folders]
    assert our_fid(*mine) == pytest.approx(float(reference), rel=1e-3)
