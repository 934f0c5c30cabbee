"""Teacher ODE trajectories for the ODE-regression initialisation of a causal student (registry name ``ode_pairs``).

CausVid (Yin et al., arXiv:2412.07772, sec. 3.3) and Self Forcing (Huang et al., arXiv:2506.08009, sec. 4) start
the causal student by regressing it onto its bidirectional teacher's deterministic sampling paths: noise, the states
the ODE passes at the student's few-step times, and the clean endpoint. ``diffdistill ode-pairs`` writes them:

    meta.json                 {"format": 1, "count": N, "times": [...], "shards": [...], "teacher": ..., ...}
    shard-00000.safetensors   states [n, S, *sample] (the ODE's x at each of the S student times, noisy -> clean),
                              x0 [n, *sample] (the endpoint), labels [n] (class teachers) or text [n, L, D]

The teacher runs Euler on a grid through every student time (inference/ode_pairs.py writes the folder);
:class:`ODEPairsStream` serves them like the other streams (resumable positions; ``Batch.states``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import Batch, epoch_batch_indices
from ..models.base import Cond

META = "meta.json"


@dataclass
class ODEPairsConfig:
    """A folder written by ``diffdistill ode-pairs``."""

    path: str = ""

    @property
    def num_classes(self) -> int:
        meta = Path(self.path).expanduser() / META
        return int(json.loads(meta.read_text()).get("num_classes", 0)) if self.path and meta.is_file() else 0


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
