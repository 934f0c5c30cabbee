"""Writing teacher ODE trajectories for the ODE-regression initialisation (``diffdistill ode-pairs``; the folder
layout and its stream are in diffdistill/data/ode_pairs.py).

The teacher runs Euler (its own ODE sampler, inference/sampling.ode_sample) with CFG on a grid that contains every
student time, ``steps_per_segment`` uniform steps between consecutive ones, so each stored state is exactly on the
teacher's path (CausVid, arXiv:2412.07772, sec. 3.3 keeps the states of a 50-step path at the student's times).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..data.ode_pairs import META
from ..models.base import Cond, DiffusionModel, guided
from .sampling import ode_sample


def ode_grid(times: list[float], steps_per_segment: int, t_end: float = 0.0) -> Tensor:
    """Euler times from times[0] down to ``t_end`` that pass through every student time: ``steps_per_segment``
    uniform steps between consecutive times (and after the last one). Float64 [len(times) * steps_per_segment]."""
    if steps_per_segment < 1:
        raise ValueError(f"steps_per_segment must be >= 1, got {steps_per_segment}")
    edges = list(times) + [t_end]
    parts = [torch.linspace(a, b, steps_per_segment + 1, dtype=torch.float64)[:-1] for a, b in zip(edges, edges[1:])]
    return torch.cat(parts)


@torch.no_grad()
def teacher_trajectories(teacher: DiffusionModel, noise: Tensor, times: list[float], steps_per_segment: int,
                         guidance: float, cond: Cond | None, uncond: Cond | None = None) -> tuple[Tensor, Tensor]:
    """(states [B, S, *sample] at the student ``times``, endpoint x0 [B, *sample]) of the teacher's CFG Euler ODE."""
    grid = ode_grid(times, steps_per_segment)
    keep = {i * steps_per_segment: s for s, i in enumerate(range(len(times)))}
    states: list[Tensor | None] = [None] * len(times)

    def capture(i: int, x: Tensor, x0: Tensor) -> None:
        if i in keep:
            states[keep[i]] = x.clone()

    net = guided(teacher, guidance, uncond) if cond is not None else teacher
    x0 = ode_sample(net, noise, grid, cond, callback=capture)
    return torch.stack(states, dim=1), x0


def write_ode_pairs(teacher: DiffusionModel, out: str | Path, n: int, times: list[float], guidance: float,
                    steps_per_segment: int = 12, num_classes: int = 0, seed: int = 0, batch_size: int = 16,
                    shard_size: int = 1000, info: dict | None = None) -> Path:
    """Sample ``n`` class-balanced trajectories of ``teacher`` (noise from ``seed``) into ``out``; returns it.
    The meta records the wall time as ``generation_seconds``: the pairs are a stage of the student that regresses on
    them (train/lineage.py ``stages_of_ode_pairs``), so benchmark tables count it."""
    from safetensors.torch import save_file

    if n < 1 or batch_size < 1:
        raise ValueError(f"--n and --batch-size must be >= 1, got {n}, {batch_size}")
    if any(b >= a for a, b in zip(times, times[1:])) or not all(0 < t <= 1 for t in times):
        raise ValueError(f"--times must decrease strictly within (0, 1], got {times}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = next(teacher.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    shards, buffer = [], {"states": [], "x0": [], "labels": []}

    def flush() -> None:
        if buffer["x0"]:
            name = f"shard-{len(shards):05d}.safetensors"
            save_file({k: torch.cat(v).contiguous() for k, v in buffer.items() if v}, str(out / name))
            shards.append(name)
            for v in buffer.values():
                v.clear()

    for start in tqdm(range(0, n, batch_size), desc="ode pairs", unit="batch"):
        size = min(batch_size, n - start)
        noise = torch.randn(size, *teacher.data_shape, generator=gen).to(device)
        labels = (torch.arange(start, start + size) % num_classes) if num_classes else None
        cond = Cond(labels=labels.to(device)) if labels is not None else None
        states, x0 = teacher_trajectories(teacher, noise, times, steps_per_segment, guidance, cond)
        buffer["states"].append(states.cpu())
        buffer["x0"].append(x0.cpu())
        if labels is not None:
            buffer["labels"].append(labels)
        if sum(len(x) for x in buffer["x0"]) >= shard_size:
            flush()
    flush()
    meta = {"format": 1, "count": n, "times": list(times), "shards": shards, "guidance": guidance,
            "steps_per_segment": steps_per_segment, "seed": seed, "num_classes": num_classes,
            "generation_seconds": round(time.perf_counter() - started, 1), **(info or {})}
    (out / META).write_text(json.dumps(meta, indent=2))
    return out
