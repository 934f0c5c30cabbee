"""Teacher ODE trajectories for the ODE-regression initialisation of a causal student (registry name ``ode_pairs``).

CausVid (Yin et al., arXiv:2412.07772, sec. 3.3) and Self Forcing (Huang et al., arXiv:2506.08009, sec. 4) start
the causal student by regressing it onto its bidirectional teacher's deterministic sampling paths: noise, the states
the ODE passes at the student's few-step times, and the clean endpoint. ``diffdistill ode-pairs`` writes them:

    meta.json                 {"format": 1, "count": N, "times": [...], "shards": [...], "teacher": ..., ...}
    shard-00000.safetensors   states [n, S, *sample] (the ODE's x at each of the S student times, noisy -> clean),
                              x0 [n, *sample] (the endpoint), labels [n] (class teachers) or text [n, L, D]

The teacher runs Euler (its own ODE sampler, inference/sampling.ode_sample) on a grid that contains every student
time, ``steps_per_segment`` steps between consecutive ones, with CFG, so each stored state is exactly on the path.
:class:`ODEPairsStream` serves them like the other streams (resumable positions; ``Batch.states``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import Batch, epoch_batch_indices
from ..models.base import Cond, DiffusionModel, guided

META = "meta.json"


@dataclass
class ODEPairsConfig:
    """A folder written by ``diffdistill ode-pairs``."""

    path: str = ""

    @property
    def num_classes(self) -> int:
        meta = Path(self.path).expanduser() / META
        return int(json.loads(meta.read_text()).get("num_classes", 0)) if self.path and meta.is_file() else 0


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
    from ..inference.sampling import ode_sample

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
    """Sample ``n`` class-balanced trajectories of ``teacher`` (noise from ``seed``) into ``out``; returns it."""
    from safetensors.torch import save_file

    if n < 1 or batch_size < 1:
        raise ValueError(f"--n and --batch-size must be >= 1, got {n}, {batch_size}")
    if any(b >= a for a, b in zip(times, times[1:])) or not all(0 < t <= 1 for t in times):
        raise ValueError(f"--times must decrease strictly within (0, 1], got {times}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = next(teacher.parameters()).device
    gen = torch.Generator().manual_seed(seed)
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
            "steps_per_segment": steps_per_segment, "seed": seed, "num_classes": num_classes, **(info or {})}
    (out / META).write_text(json.dumps(meta, indent=2))
    return out


class ODEPairsStream:
    """Batches of (clean endpoint x0, states at the student times, condition) in resumable epochs."""

    def __init__(self, cfg: ODEPairsConfig, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        from ..files import load_safetensors

        root = Path(cfg.path).expanduser()
        if not cfg.path or not (root / META).is_file():
            raise FileNotFoundError(f"data.path={cfg.path!r} holds no {META}: write the pairs first with "
                                    "`diffdistill ode-pairs <teacher export> --times ... --out <folder>`")
        self.meta = json.loads((root / META).read_text())
        shards = [load_safetensors(root / name, "rerun `diffdistill ode-pairs`") for name in self.meta["shards"]]
        self.data = {k: torch.cat([s[k] for s in shards]) for k in shards[0]}
        self.times = torch.tensor(self.meta["times"], dtype=torch.float64)
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        epoch_batch_indices(len(self.data["x0"]), batch_size, seed, rank, world, 0)    # batch too large: fail now
        self.position = 0

    def next(self) -> Batch:
        index = epoch_batch_indices(len(self.data["x0"]), self.batch_size, self.seed, self.rank, self.world,
                                    self.position)
        self.position += 1
        labels = self.data["labels"][index] if "labels" in self.data else None
        return Batch(self.data["x0"][index].float(), Cond(labels=labels), index,
                     states=self.data["states"][index].float(), state_times=self.times)
