import pytest
import torch

from diffdistill.data import FMNIST_DEB_DIR, fmnist_to_tensor, load_fashion_mnist
from diffdistill.metrics.fmnist import ASSETS, FMNISTClassifier, FMNISTEvaluator, within_class_diversity


def test_within_class_diversity_known_answer():
    feats = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert within_class_diversity(feats, labels) == pytest.approx((5.0 + 0.0) / 2)    # class 0: 5, class 1: 0
    with pytest.raises(ValueError, match="two or more"):
        within_class_diversity(feats[:1], labels[:1])


def test_classifier_shapes_and_bad_input():
    net = FMNISTClassifier().eval()
    assert net.features(torch.zeros(3, 1, 32, 32)).shape == (3, 128) and net(torch.zeros(3, 1, 32, 32)).shape == (3, 10)
    with pytest.raises(ValueError, match=r"grey images \[B, 1, H, W\]"):
        net.features(torch.zeros(3, 3, 32, 32))


def test_missing_evaluator_says_how_to_rebuild_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_classifier.py"):
        FMNISTEvaluator(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not (FMNIST_DEB_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason="needs Fashion-MNIST")
def test_shipped_evaluator_scores_the_test_set_as_the_reference():
    evaluator = FMNISTEvaluator()
    images, labels = load_fashion_mnist("test")
    x, y = fmnist_to_tensor(images), torch.from_numpy(labels.astype("int64"))
    scores = evaluator.score(x, y)
    assert scores.accuracy >= 0.90                       # the bar of benchmark B1
    assert scores.fid < 1e-6                             # the reference statistics are these very features
    shuffled = evaluator.score(x, y[torch.randperm(len(y))])
    assert shuffled.accuracy < 0.2 and shuffled.fid == pytest.approx(scores.fid, abs=1e-6)
    noise = evaluator.score(torch.rand(2000, 1, 32, 32) * 2 - 1, y[:2000])
    assert noise.fid > 50 * (scores.fid + 1) and noise.accuracy < 0.3
    half = evaluator.score(x[:5000], y[:5000])            # a subset of the same distribution is close
    assert half.fid < 0.05 * noise.fid
    assert (ASSETS / "card.json").is_file()
