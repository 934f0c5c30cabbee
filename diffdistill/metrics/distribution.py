"""Distances between point clouds for the analytic-toy benchmark (B3): sliced Wasserstein and mode coverage."""

from __future__ import annotations

import torch
from torch import Tensor


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equally sized point sets (Rabin et al. 2011), in float64.

    Each random unit direction reduces the problem to 1-D, where W2 is the RMS gap between sorted projections.
    Shapes: a, b [N, D] with the same N.
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"need two [N, D] sets of the same shape, got {list(a.shape)} and {list(b.shape)}")
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa = (a.double().cpu() @ dirs).sort(dim=0).values
    pb = (b.double().cpu() @ dirs).sort(dim=0).values
    return float(((pa - pb) ** 2).mean().sqrt())


def mode_coverage(samples: Tensor, means: Tensor, radius: float) -> tuple[float, float]:
    """(share of samples within ``radius`` of some mode, share of modes that hold at least 1% of the samples).

    Shapes: samples [N, D]; means [K, D].
    """
    on_mode, counts = _mode_counts(samples, means, radius)
    return float(on_mode.double().mean()), float((counts >= 0.01 * samples.shape[0]).double().mean())


def _mode_counts(samples: Tensor, means: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """(which samples lie within ``radius`` of their nearest mode [N] bool, on-mode samples per mode [K])."""
    dist = torch.cdist(samples.double().cpu(), means.double().cpu())        # [N, K]
    near, nearest = dist.min(dim=1)
    on_mode = near <= radius
    return on_mode, torch.bincount(nearest[on_mode], minlength=means.shape[0]).double()


def mode_weight_error(samples: Tensor, means: Tensor, weights: Tensor, radius: float) -> float:
    """Total-variation distance between the share of on-mode samples at each mode and the mixture's mode weights
    (0: the weights are kept; a student that drops or flattens unequal modes scores high). Shapes: samples [N, D];
    means [K, D]; weights [K] summing to 1."""
    _, counts = _mode_counts(samples, means, radius)
    shares = counts / counts.sum().clamp_min(1.0)
    return float(0.5 * (shares - weights.double().cpu()).abs().sum())


def toy_report(samples: Tensor, mixture_cfg, n_reference: int | None = None, seed: int = 1) -> dict[str, float]:
    """Benchmark B3 numbers for samples of a 2-D mixture: sliced W2 to exact samples, mode shares, how far the
    per-mode shares are from the mode weights, and the same two distances for an exact draw (the noise floor at this
    sample size)."""
    from ..models.toy import GaussianMixture

    mixture = GaussianMixture(mixture_cfg)
    n = n_reference or samples.shape[0]
    gen = torch.Generator().manual_seed(seed)
    real, real2 = mixture.sample_data(n, generator=gen), mixture.sample_data(n, generator=gen)
    radius = 4 * mixture_cfg.std
    on_mode, covered = mode_coverage(samples, mixture.means, radius)
    return {"sliced_w2": sliced_wasserstein(samples, real), "sliced_w2_floor": sliced_wasserstein(real2, real),
            "on_mode": on_mode, "modes_covered": covered,
            "mode_weight_error": mode_weight_error(samples, mixture.means, mixture.weights, radius),
            "mode_weight_error_floor": mode_weight_error(real2, mixture.means, mixture.weights, radius)}
