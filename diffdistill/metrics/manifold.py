"""Improved precision and recall (Kynkäänniemi et al. 2019) on any feature space.

Each set's manifold is the union of balls around its samples with radius = distance to the k-th nearest neighbour in
the same set (k = 3 in the paper). Precision = share of generated samples inside the real manifold (quality);
recall = share of real samples inside the generated manifold (coverage: what mode collapse lowers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PrecisionRecall:
    precision: float
    recall: float
    k: int


def knn_radii(features: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Distance of each sample to its k-th nearest other sample. Shapes: [N, D] -> [N]."""
    radii = []
    for start in range(0, features.shape[0], chunk):
        d = torch.cdist(features[start:start + chunk], features)
        radii.append(d.kthvalue(k + 1, dim=1).values)          # +1: the sample itself is at distance 0
    return torch.cat(radii)


def inside_manifold(queries: Tensor, support: Tensor, radii: Tensor, chunk: int = 1024) -> Tensor:
    """Whether each query lies within radius[j] of some support sample j. Shapes: [Q, D], [S, D], [S] -> [Q] bool."""
    out = []
    for start in range(0, queries.shape[0], chunk):
        d = torch.cdist(queries[start:start + chunk], support)
        out.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> PrecisionRecall:
    """Shapes: real [N, D], fake [M, D] (float64 inside); needs more than k samples in each set."""
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"need two [N, D] feature sets of the same D, got {list(real.shape)} and {list(fake.shape)}")
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, got {real.shape[0]} real "
                         f"and {fake.shape[0]} generated")
    real, fake = real.detach().double().cpu(), fake.detach().double().cpu()
    precision = inside_manifold(fake, real, knn_radii(real, k)).double().mean()
    recall = inside_manifold(real, fake, knn_radii(fake, k)).double().mean()
    return PrecisionRecall(float(precision), float(recall), k)
