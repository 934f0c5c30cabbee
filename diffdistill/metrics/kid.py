"""Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs"), on any feature space, in float64.

KID = unbiased MMD^2 between real and generated features under the cubic polynomial kernel
k(x, y) = (x.y / D + 1)^3, averaged over random subsets (clean-fid and torch-fidelity: 100 subsets of 1000). Unlike
FID it has an unbiased estimator, so small-N comparisons are fair; it can be slightly negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class KIDResult:
    mean: float
    std: float
    subsets: int
    subset_size: int


def polynomial_kernel(x: Tensor, y: Tensor) -> Tensor:
    """(x y^T / D + 1)^3. Shapes: x [N, D], y [M, D] -> [N, M]."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased MMD^2 under :func:`polynomial_kernel`: the diagonal terms k(x_i, x_i) are left out (needs N, M >= 2)."""
    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return ((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
            - 2 * kxy.mean())


def kid(real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> KIDResult:
    """KID of ``fake`` against ``real`` features: mean and std of the subset MMD^2 estimates.

    The subset size is capped at the smaller set (as clean-fid does). Shapes: real [N, D], fake [M, D].
    """
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"KID needs two [N, D] feature sets of the same D, got {list(real.shape)} and "
                         f"{list(fake.shape)}")
    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples in each set, got {real.shape[0]} real and {fake.shape[0]} "
                         "generated")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    real, fake = real.detach().double().cpu(), fake.detach().double().cpu()
    if not (torch.isfinite(real).all() and torch.isfinite(fake).all()):
        raise ValueError("features contain NaN or inf; check the images fed to the feature network")
    gen = torch.Generator().manual_seed(seed)
    values = torch.stack([
        mmd2_unbiased(real[torch.randperm(real.shape[0], generator=gen)[:size]],
                      fake[torch.randperm(fake.shape[0], generator=gen)[:size]])
        for _ in range(subsets)])
    std = float(values.std()) if subsets > 1 else 0.0
    return KIDResult(float(values.mean()), std, subsets, size)
