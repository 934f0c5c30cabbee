"""Feature extractors and extract_features: batching does not change features, the cache is reused only for the
same pixels and protocol, and each extractor reports what produced its features."""

import hashlib

import pytest
import torch
from torch import nn

from diffdistill.metrics.extractors import (CustomExtractor, FeatureExtractor, FMNISTExtractor, InceptionExtractor,
                                            extract_features, module_sha256)
from diffdistill.metrics.fmnist import ASSETS, CLASSIFIER_FILE, FMNISTEvaluator
from diffdistill.metrics.inception import FIDInceptionV3, InceptionNetwork
from diffdistill.metrics.resize import clean_resize, legacy_resize


class Counting(CustomExtractor):
    """A custom extractor that counts how many images it was asked to embed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = 0

    def __call__(self, images):
        self.seen += images.shape[0]
        return super().__call__(images)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def images(n: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 12, 12, generator=torch.Generator().manual_seed(seed))


def test_features_do_not_depend_on_batch_size_or_on_how_the_input_is_split():
    ex = CustomExtractor(small_net(), name="small")
    x = images()
    with torch.no_grad():
        direct = ex.fn(x)
    for batch_size in (1, 3, 10, 64):
        feats = extract_features(ex, x, batch_size=batch_size, progress=False)
        assert feats.shape == (10, 8)
        torch.testing.assert_close(feats, direct, rtol=0, atol=1e-6)
    # uneven chunks and a DataLoader-style (images, labels) stream are regrouped in order
    chunks = [x[:1], x[1:7], x[7:]]
    torch.testing.assert_close(extract_features(ex, chunks, batch_size=4, progress=False), direct, rtol=0, atol=1e-6)
    pairs = [(c, torch.zeros(len(c))) for c in chunks]
    torch.testing.assert_close(extract_features(ex, pairs, batch_size=4, progress=False), direct, rtol=0, atol=1e-6)


def test_cache_is_reused_for_the_same_pixels_and_protocol_only(tmp_path):
    cache = tmp_path / "feats" / "gen.safetensors"
    ex = Counting(small_net(), name="small", info={"checkpoint": "a"})
    x = images()
    first = extract_features(ex, x, batch_size=4, progress=False, cache_path=cache)
    assert ex.seen == 10 and cache.is_file()
    again = extract_features(ex, list(x.split(3)), batch_size=7, progress=False, cache_path=cache)
    assert ex.seen == 10 and torch.equal(again, first)          # no extractor call; batching is not in the key
    changed = x.clone()
    changed[5, 0, 0, 0] += 0.01                                 # one pixel differs -> recomputed
    with pytest.warns(UserWarning, match="recomputing"):
        extract_features(ex, changed, batch_size=4, progress=False, cache_path=cache)
    assert ex.seen == 20
    ex.info["checkpoint"] = "b"                                 # same pixels, another protocol -> recomputed
    with pytest.warns(UserWarning, match="another protocol"):
        extract_features(ex, changed, batch_size=4, progress=False, cache_path=cache)
    assert ex.seen == 30
    with pytest.raises(ValueError, match="re-iterable"):
        extract_features(ex, (c for c in x.split(2)), progress=False, cache_path=cache)


def test_protocols_name_weights_and_versions():
    net = small_net()
    ex = CustomExtractor(net, name="small", info={"resolution": "12"})
    proto = ex.protocol()
    assert proto["extractor"] == "small" and proto["resolution"] == "12" and proto["torch"] == torch.__version__
    assert proto["weights_sha256"] == module_sha256(net)
    with torch.no_grad():
        net[0].bias[0] += 1.0
    assert ex.protocol()["weights_sha256"] != proto["weights_sha256"]   # weights are in the hash
    assert CustomExtractor(lambda x: x.flatten(1), name="flat").protocol()["weights_sha256"] == "unhashed callable"
    with pytest.raises(ValueError, match=r"must return \[B, D\]"):
        CustomExtractor(nn.Identity(), name="id")(images(2))
    assert isinstance(ex, FeatureExtractor)


def test_inception_extractor_glues_each_modes_resize_to_its_network(tmp_path):
    torch.manual_seed(0)
    trunk = FIDInceptionV3().eval()
    x = torch.randint(0, 256, (2, 3, 16, 16), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    clean = InceptionExtractor("clean", network=InceptionNetwork(trunk, "clean", tmp_path / "w.pt", "ab" * 32))
    legacy = InceptionExtractor("legacy", network=InceptionNetwork(trunk, "legacy", tmp_path / "w.pth", "cd" * 32))
    with torch.no_grad():
        assert torch.equal(clean(x), trunk((clean_resize(x) - 128) / 128))
        assert torch.equal(legacy(x), trunk(2 * legacy_resize(x) - 1))
    proto = clean.protocol()
    assert proto["weights_sha256"] == "ab" * 32 and proto["resolution"] == "299" and "pillow" in proto
    assert "bilinear" in legacy.protocol()["resize"] and "pillow" not in legacy.protocol()
    with pytest.raises(ValueError, match="loaded for 'clean' mode"):
        InceptionExtractor("legacy", network=clean.network)


def test_fmnist_extractor_wraps_the_shipped_evaluator():
    ex = FMNISTExtractor()
    x = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    feats = extract_features(ex, x, batch_size=4, progress=False)
    assert feats.shape == (6, 128)
    assert torch.equal(feats, FMNISTEvaluator().features_and_logits(x)[0])
    assert ex.protocol()["weights_sha256"] == hashlib.sha256((ASSETS / CLASSIFIER_FILE).read_bytes()).hexdigest()
    assert isinstance(ex, FeatureExtractor)
