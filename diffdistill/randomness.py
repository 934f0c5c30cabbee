"""Randomness that must be identical on every rank (DMD2's backward-simulation step index, the self-forcing exit
step, chunk counts): drawn on rank 0 and broadcast, the Self-Forcing ``generate_and_sync_list`` idea.

Per-rank randomness (noise, t) comes from the usual torch RNG, seeded ``seed + rank`` by the trainer. This uses the
process group that accelerate set up; in a single process it simply draws locally.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def shared_randint(low: int, high: int, size: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
    """Integers in [low, high) drawn on rank 0 from the torch RNG and broadcast to all ranks (int64 [size])."""
    if high <= low:
        raise ValueError(f"shared_randint needs low < high, got [{low}, {high})")
    values = torch.randint(low, high, (size,), device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(values, src=0)
    return values
