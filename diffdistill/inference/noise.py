"""The one seeding rule for sampling: sample ``i`` of a draw with seed ``s`` gets noise of its own.

Its starting noise comes from a CPU generator keyed by ``(s, i, 0)``, and the fresh noise a few-step sampler adds
before step ``j`` from ``(s, i, j)``. Sample ``i`` is therefore the same whatever the batch size, the number of
samples drawn, the device, or which program draws it (``diffdistill sample`` / ``eval``, the demo, the benchmark
scripts): the image a user sees in the demo for seed 0 is image 0 of the evaluation at seed 0.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor


def _generator(seed: int, index: int, step: int) -> torch.Generator:
    key = hashlib.sha256(f"sample/{seed}/{index}/{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:8], "little") & (2**63 - 1))


class SampleNoise:
    """Noise for samples ``first, first + 1, ...`` of the draw seeded ``seed``. Shapes: [B, *shape], float32, CPU."""

    def __init__(self, seed: int, shape: Sequence[int]) -> None:
        self.seed, self.shape = int(seed), tuple(shape)

    def _draw(self, indices: Sequence[int], step: int) -> Tensor:
        return torch.stack([torch.randn(self.shape, generator=_generator(self.seed, int(i), step)) for i in indices])

    def initial(self, indices: Sequence[int]) -> Tensor:
        """Starting noise x_T of each sample."""
        return self._draw(indices, 0)

    def fresh(self, indices: Sequence[int], step: int) -> Tensor:
        """The fresh noise re-noising each sample's x0 after step ``step`` (0-based) of a few-step sampler."""
        return self._draw(indices, step + 1)
