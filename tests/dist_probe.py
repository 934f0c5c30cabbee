"""Launched by test_distributed.py under `torchrun --nproc_per_node 2` (accelerate runs it as MULTI_CPU, gloo).

Trains the toy teacher through the real trainer; its loss also draws a value through the shared-randomness helper
and one from the per-rank RNG at every step, and each rank writes what it drew. Argument: run dir, max steps.
"""

import json
import sys
from pathlib import Path

import torch
from accelerate.utils import set_seed

from diffdistill.data import ToyDataConfig, ToyMixtureStream
from diffdistill.methods.teacher import Teacher, TeacherConfig
from diffdistill.models.toy import MLPConfig, MLPDenoiser
from diffdistill.randomness import shared_randint
from diffdistill.train.trainer import TrainerConfig, fit, make_accelerator


class Probe(Teacher):
    def __init__(self):
        super().__init__(TeacherConfig(preview_steps=4), MLPDenoiser(MLPConfig(hidden=32)))
        self.shared, self.local, self.batches = [], [], []

    def loss(self, phase, batch, step):
        self.shared.append(int(shared_randint(0, 1000)))
        self.local.append(int(torch.randint(0, 1000, (1,))))
        self.batches.append(batch.fingerprint())
        return super().loss(phase, batch, step)


def main():
    run_dir, steps = Path(sys.argv[1]), int(sys.argv[2])
    cfg = TrainerConfig(max_steps=steps, batch_size=16, checkpoint_every=3, log_every=1, preview_count=8, cpu=True)
    accelerator = make_accelerator(cfg, run_dir)
    set_seed(0)
    method = Probe()
    data = ToyMixtureStream(ToyDataConfig(), cfg.batch_size, cfg.seed, accelerator.process_index)
    result = fit(method, data, cfg, run_dir, accelerator)
    weights = {k: v.sum().item() for k, v in method.role("model").state_dict().items()}
    out = {"rank": accelerator.process_index, "world": accelerator.num_processes, "shared": method.shared,
           "local": method.local, "batches": method.batches, "step": result.step, "weights": weights}
    (run_dir / f"probe-rank{accelerator.process_index}-{steps}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main()
