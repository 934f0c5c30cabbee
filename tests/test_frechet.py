import pytest
import torch

from diffdistill.metrics.frechet import FeatureStats, frechet_distance


def stats(mu, sigma, n=1000):
    return FeatureStats(torch.as_tensor(mu, dtype=torch.float64), torch.as_tensor(sigma, dtype=torch.float64), n)


def test_closed_form_for_commuting_and_general_covariances():
    # diagonal: FD = |dmu|^2 + sum (sqrt(s1) - sqrt(s2))^2
    a, b = stats([0.0, 1.0], torch.diag(torch.tensor([4.0, 1.0]))), stats([3.0, 1.0], torch.diag(torch.tensor([1.0, 9.0])))
    assert frechet_distance(a, b) == pytest.approx(9.0 + (2 - 1) ** 2 + (1 - 3) ** 2, rel=1e-12)
    # 1-D: FD = (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s
    assert frechet_distance(stats([1.0], [[4.0]]), stats([-1.0], [[0.25]])) == pytest.approx(4 + 1.5**2)
    # general non-commuting case against the definition tr((S1 S2)^(1/2)) via eigenvalues of S1 S2 directly
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randn(6, 6, generator=g, dtype=torch.float64)
    s1, s2 = m1 @ m1.T + 0.1 * torch.eye(6, dtype=torch.float64), m2 @ m2.T
    expect = torch.trace(s1) + torch.trace(s2) - 2 * torch.linalg.eigvals(s1 @ s2).real.clamp_min(0).sqrt().sum()
    assert frechet_distance(stats(torch.zeros(6), s1), stats(torch.zeros(6), s2)) == pytest.approx(float(expect), rel=1e-9)


def test_identical_sets_give_zero_and_singular_covariances_stay_real():
    f = torch.randn(50, 64)                         # N < D: singular covariance
    s = FeatureStats.from_features(f)
    assert frechet_distance(s, s) == pytest.approx(0.0, abs=1e-8)
    shifted = FeatureStats.from_features(f + 1.0)
    assert frechet_distance(s, shifted) == pytest.approx(64.0, rel=1e-6)


def test_matches_torchmetrics_fid_with_the_same_custom_features():
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Flatten(torch.nn.Module):
        num_features = 12

        def forward(self, x):
            return x.float().flatten(1)[:, :12] / 255.0

    g = torch.Generator().manual_seed(1)
    real = torch.randint(0, 256, (300, 3, 4, 4), generator=g, dtype=torch.uint8)
    fake = (real.float() * 0.7 + 30).clamp(0, 255).to(torch.uint8)
    metric = FrechetInceptionDistance(feature=Flatten())
    metric.set_dtype(torch.float64)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    ours = frechet_distance(FeatureStats.from_features(real.float().flatten(1)[:, :12] / 255.0),
                            FeatureStats.from_features(fake.float().flatten(1)[:, :12] / 255.0))
    assert ours == pytest.approx(float(metric.compute()), rel=1e-5)


def test_bad_inputs_and_save_load(tmp_path):
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats.from_features(torch.randn(1, 4))
    with pytest.raises(ValueError, match="NaN"):
        FeatureStats.from_features(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="sizes differ"):
        frechet_distance(FeatureStats.from_features(torch.randn(5, 3)), FeatureStats.from_features(torch.randn(5, 4)))
    s = FeatureStats.from_features(torch.randn(20, 3))
    s.save(tmp_path / "ref.safetensors")
    back = FeatureStats.load(tmp_path / "ref.safetensors")
    assert back.n == 20 and torch.equal(back.mu, s.mu) and torch.equal(back.sigma, s.sigma)
