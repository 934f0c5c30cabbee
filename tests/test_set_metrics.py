"""KID and improved precision/recall: known answers and the properties they exist to measure."""

import pytest
import torch

from diffdistill.metrics.kid import kid, mmd2_unbiased, polynomial_kernel
from diffdistill.metrics.manifold import precision_recall


def test_unbiased_mmd_matches_the_double_sum_definition():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 3, generator=gen).double(), torch.randn(5, 3, generator=gen).double() + 0.5
    k = lambda a, b: (a @ b / 3 + 1) ** 3                                            # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / 35
    torch.testing.assert_close(mmd2_unbiased(x, y), xx + yy - 2 * xy)
    assert polynomial_kernel(x, y).shape == (7, 5)


def test_kid_is_unbiased_near_zero_for_one_distribution_and_grows_with_a_shift():
    gen = torch.Generator().manual_seed(1)
    real, same = torch.randn(2000, 16, generator=gen), torch.randn(2000, 16, generator=gen)
    result = kid(real, same, subsets=50, subset_size=500)
    assert abs(result.mean) < 3 * result.std / 50 ** 0.5 + 1e-3     # unbiased: zero within its standard error
    shifted = kid(real, same + 0.5, subsets=50, subset_size=500)
    assert shifted.mean > 10 * max(abs(result.mean), result.std) and shifted.subset_size == 500
    # (x.y/D + 1)^3 for a mean shift m: MMD^2 = sum of the kernel's feature-space mean differences, here > 0 and
    # growing with the shift
    assert kid(real, same + 1.0, subsets=20, subset_size=500).mean > shifted.mean


def test_kid_rejects_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        kid(torch.randn(1, 4), torch.randn(10, 4))
    with pytest.raises(ValueError, match="same D"):
        kid(torch.randn(10, 4), torch.randn(10, 5))
    with pytest.raises(ValueError, match="NaN"):
        kid(torch.full((10, 4), float("nan")), torch.randn(10, 4))


def test_precision_recall_known_cases():
    gen = torch.Generator().manual_seed(2)
    real = torch.randn(500, 2, generator=gen)
    both = precision_recall(real, real.clone())
    assert both.precision == 1.0 and both.recall == 1.0
    far = precision_recall(real, real + 100.0)
    assert far.precision == 0.0 and far.recall == 0.0
    # mode collapse: generated samples all near one real point -> precise but no coverage
    collapsed = precision_recall(real, real[:1] + 0.01 * torch.randn(500, 2, generator=gen))
    assert collapsed.precision > 0.9 and collapsed.recall < 0.1
    with pytest.raises(ValueError, match="more than 3"):
        precision_recall(real[:3], real)
