"""Launched by test_self_forcing.py and test_asd.py under `torchrun --nproc_per_node 2` (accelerate MULTI_CPU, gloo):
trains self forcing (or ASD) on a tiny class-conditioned Wan through the real trainer and writes, per rank, the exit
step each rollout drew, ASD's rung draws and the student's weights. Arguments: run dir [method name]."""

import json
import sys
from pathlib import Path

import torch
from accelerate.utils import set_seed

from diffdistill.data import Batch
from diffdistill.methods import build_method
from diffdistill.models.base import Cond
from diffdistill.models.registry import build_model
from diffdistill.train.trainer import OptimizerConfig, TrainerConfig, fit, make_accelerator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_diffusers import tiny_wan_config  # noqa: E402


class RandomClips:
    """Per-rank random clips with labels (a DataStream)."""

    def __init__(self, rank: int) -> None:
        self.rank, self.position = rank, 0

    def next(self) -> Batch:
        gen = torch.Generator().manual_seed(1000 * self.rank + self.position)
        self.position += 1
        return Batch(torch.rand(2, 4, 1, 8, 8, generator=gen) * 2 - 1, Cond(labels=torch.tensor([1, 2])),
                     torch.arange(2))


def main() -> None:
    run_dir = Path(sys.argv[1])
    name = sys.argv[2] if len(sys.argv) > 2 else "self_forcing"
    opt = OptimizerConfig(lr=1e-3, betas=(0.0, 0.999))
    cfg = TrainerConfig(max_steps=3, batch_size=2, log_every=1, checkpoint_every=10, preview_count=2, cpu=True,
                        optimizers={"student": opt, "critic": opt})
    accelerator = make_accelerator(cfg, run_dir)
    set_seed(0)
    teacher = build_model({"kind": "wan", "config": {**tiny_wan_config(), "in_channels": 1, "out_channels": 1},
                           "num_classes": 10, "num_frames": 4, "height": 8, "width": 8})
    method = build_method({"name": name, "chunk_frames": 2, "student_times": [1.0, 0.75, 0.5],
                           "student_every": 1}, {"model": teacher}, 10)
    exits = []
    generate = method.generate

    def recording(batch, with_grad):
        x, e = generate(batch, with_grad)
        exits.append(e)
        return x, e

    method.generate = recording
    rungs = []
    if hasattr(method, "draw_rung"):
        draw = method.draw_rung

        def recording_rung(device):
            rungs.append(draw(device))
            return rungs[-1]

        method.draw_rung = recording_rung
    fit(method, RandomClips(accelerator.process_index), cfg, run_dir, accelerator)
    weights = [float(p.detach().double().sum()) for p in method.role("student").parameters()]
    out = {"rank": accelerator.process_index, "exits": exits, "rungs": rungs, "weights": weights}
    (run_dir / f"sf-rank{accelerator.process_index}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main()
