"""Fréchet distance between Gaussians fitted to feature sets (the FID formula, Heusel et al. 2017), in float64.

    FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

The trace of the matrix square root is computed from eigenvalues: S1 S2 is similar to the symmetric PSD matrix
S1^(1/2) S2 S1^(1/2), so tr((S1 S2)^(1/2)) = sum sqrt(eig(S1^(1/2) S2 S1^(1/2))). That avoids scipy.linalg.sqrtm,
whose results differ between scipy versions and turn complex on near-singular inputs (Parmar et al., arXiv:2104.11222, sec. 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from ..files import load_safetensors


@dataclass
class FeatureStats:
    """Mean [D] and covariance [D, D] (float64) of N feature vectors."""

    mu: Tensor
    sigma: Tensor
    n: int

    @classmethod
    def from_features(cls, features: Tensor) -> "FeatureStats":
        """Shapes: features [N, D]. Needs N >= 2; N <= D gives a singular covariance (allowed, but FD is biased)."""
        if features.dim() != 2:
            raise ValueError(f"features must be [N, D], got {list(features.shape)}")
        n = features.shape[0]
        if n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {n}")
        f = features.detach().double().cpu()
        if not bool(torch.isfinite(f).all()):
            raise ValueError("features contain NaN or inf; check the images fed to the feature network")
        mu = f.mean(0)
        centred = f - mu
        return cls(mu, centred.T @ centred / (n - 1), n)

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        save_file({"mu": self.mu.contiguous(), "sigma": self.sigma.contiguous(), "n": torch.tensor([self.n])},
                  str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> "FeatureStats":
        data = load_safetensors(path, "rebuild the reference statistics (`diffdistill eval ref`)")
        return cls(data["mu"].double(), data["sigma"].double(), int(data["n"][0]))


def _sqrt_psd(matrix: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """Fréchet distance between two Gaussians (float64). Never NaN or complex for valid covariances."""
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"feature sizes differ: {a.mu.shape[0]} vs {b.mu.shape[0]}")
    root = _sqrt_psd(a.sigma)
    middle = root @ b.sigma @ root
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    diff = a.mu - b.mu
    value = diff @ diff + torch.trace(a.sigma) + torch.trace(b.sigma) - 2 * trace_sqrt
    return float(value.clamp_min(0))
