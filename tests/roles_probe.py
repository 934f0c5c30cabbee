"""Launched by test_multi_role_ddp.py under `torchrun --nproc_per_node 2` (accelerate MULTI_CPU, gloo): runs
`diffdistill train ARGS...` through the real CLI and writes, per rank, every value drawn through
randomness.shared_randint (the choices all ranks must share: DMD2's backward-simulation step, TSCD's segment, ...)
and the weights of every trainable role (student, critic with its heads, experts) at the end. Arguments: out dir,
then the train command's arguments."""

import json
import sys
from pathlib import Path

import diffdistill.randomness as randomness
import diffdistill.train.trainer as trainer
from diffdistill.cli import main

REAL_FIT, REAL_DRAW = trainer.fit, randomness.shared_randint


def recording_fit(method, data, cfg, run_dir, accelerator, *args, **kwargs):
    draws: list[list[int]] = []

    def recording_draw(*a, **k):
        values = REAL_DRAW(*a, **k)
        draws.append([int(v) for v in values])
        return values

    for module in list(sys.modules.values()):       # the methods import the helper by name
        if getattr(module, "__name__", "").startswith("diffdistill") and \
                getattr(module, "shared_randint", None) is REAL_DRAW:
            module.shared_randint = recording_draw
    result = REAL_FIT(method, data, cfg, run_dir, accelerator, *args, **kwargs)
    weights = {group: [float(p.detach().double().sum()) for p in method.role(group).parameters()]
               for group in method.groups}
    out = Path(sys.argv[1]) / f"rank{accelerator.process_index}.json"
    out.write_text(json.dumps({"draws": draws, "weights": weights, "groups": list(method.groups)}))
    return result


if __name__ == "__main__":
    trainer.fit = recording_fit
    sys.exit(main(["train", *sys.argv[2:]]))
