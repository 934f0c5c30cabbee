import numpy as np
import pytest
import torch

from diffdistill.data import (FMNIST_DEB_DIR, FashionMNISTConfig, FashionMNISTStream, ToyDataConfig, ToyMixtureStream,
                              build_stream, fmnist_to_tensor, load_fashion_mnist)

have_fmnist = pytest.mark.skipif(not (FMNIST_DEB_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                                 reason="apt-get install dataset-fashion-mnist")


def test_toy_stream_is_a_pure_function_of_position_and_rank():
    a, b = ToyMixtureStream(ToyDataConfig(labels=True), 16, seed=3), ToyMixtureStream(ToyDataConfig(labels=True), 16, seed=3)
    first = [a.next().fingerprint() for _ in range(3)]
    b.position = 2
    assert b.next().fingerprint() == first[2]
    other_rank = ToyMixtureStream(ToyDataConfig(), 16, seed=3, rank=1)
    assert other_rank.next().fingerprint() != first[0]


def test_fmnist_tensor_range_and_padding():
    images = np.zeros((2, 28, 28), np.uint8)
    images[1] = 255
    x = fmnist_to_tensor(images)
    assert x.shape == (2, 1, 32, 32) and x[0].max() == -1.0
    assert x[1, 0, 2:30, 2:30].min() == 1.0 and x[1, 0, :2].max() == -1.0     # padding is background


def test_missing_fmnist_names_every_way_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFDISTILL_DATA", str(tmp_path))
    monkeypatch.setattr("diffdistill.data.FMNIST_DEB_DIR", tmp_path / "none")
    monkeypatch.setattr("pathlib.Path.home", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist.*DIFFDISTILL_DATA.*download"):
        load_fashion_mnist("test")


@have_fmnist
def test_fmnist_splits_and_class_balance():
    x, y = load_fashion_mnist("test")
    assert x.shape == (10_000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [1000] * 10


@have_fmnist
def test_fmnist_stream_ranks_partition_each_global_batch_and_resume_exactly():
    cfg = FashionMNISTConfig(split="test")
    r0, r1 = FashionMNISTStream(cfg, 50, seed=1, rank=0, world=2), FashionMNISTStream(cfg, 50, seed=1, rank=1, world=2)
    b0, b1 = r0.next(), r1.next()
    assert b0.x0.shape == (50, 1, 32, 32) and b0.cond.labels.shape == (50,)
    assert not set(b0.index.tolist()) & set(b1.index.tolist())
    per_epoch = 10_000 // (50 * 2)
    epoch = [r0.next().index for _ in range(per_epoch - 1)]
    seen = torch.cat([b0.index, *epoch])
    assert len(seen.unique()) == len(seen) == 50 * per_epoch                   # no repeats inside an epoch
    assert len(set(r0.next().index.tolist()) & set(seen.tolist())) > 0         # the next epoch draws them again
    again = FashionMNISTStream(cfg, 50, seed=1, rank=0, world=2)
    again.position = 3
    r0.position = 3
    assert again.next().fingerprint() == r0.next().fingerprint()
    stream = build_stream({"name": "fmnist", "split": "test", "labels": False}, 8, 0, 0, 1)
    assert stream.next().cond.labels is None
