"""Checkpoints for resume (accelerate state + our own trainer state) written atomically, and the student export.

Layout of a run directory::

    run_dir/config.yaml                  the resolved recipe
    run_dir/metrics.jsonl                one JSON line per logged step
    run_dir/checkpoints/step-000100/     accelerate.save_state (models as safetensors, optimizers, RNG states)
                        trainer_state.json  step, data position, last loss, wall time, earlier stages
                        ema.safetensors     EMA weights (if any)
    run_dir/export/                      the exported student (diffdistill.json + weights; diffusers layout for UNet/Wan)

A checkpoint is written to ``checkpoints/.tmp-step-N`` and renamed into place only when complete, so a run killed
mid-save (SIGKILL, power loss) leaves the previous checkpoint as the latest complete one. Our trainer state is JSON
and safetensors (accelerate's own custom-object hook would pickle it with ``weights_only=False``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import SAFE_WEIGHTS_NAME
from safetensors.torch import load_file, save_file
from torch import nn

STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (temporary folders of interrupted saves are ignored)."""
    root = Path(run_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file()) if root.is_dir() else []
    return done[-1] if done else None


def save_checkpoint(accelerator: Accelerator, run_dir: Path, state: dict[str, Any], ema: nn.Module | None,
                    keep: int) -> Path:
    """Save accelerate state + trainer state atomically; keep the newest ``keep`` checkpoints. All ranks call this."""
    final = checkpoint_dir(run_dir, state["step"])
    tmp = final.parent / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        if ema is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}, tmp / EMA_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))   # written last: marks the folder complete
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _prune(final.parent, keep)
    accelerator.wait_for_everyone()
    return final


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file())
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(accelerator: Accelerator, path: Path, ema: nn.Module | None) -> dict[str, Any]:
    """Restore accelerate state (models, optimizers, RNG) and return our trainer state."""
    accelerator.load_state(str(path))
    if ema is not None:
        ema_file = path / EMA_FILE
        if not ema_file.is_file():
            raise FileNotFoundError(f"{path} has no {EMA_FILE} but this run keeps an EMA; resume with the recipe the "
                                    "checkpoint was written with")
        ema.load_state_dict(load_file(ema_file))
    return json.loads((path / STATE_FILE).read_text())


def load_weights(accelerator: Accelerator, path: Path, modules: list[nn.Module], ema: nn.Module | None) -> None:
    """Only the network weights (and the EMA, when both runs keep one) of a checkpoint, for a run that starts from
    another run's checkpoint: its optimizers start fresh with its own settings, as in DMD2's second stages.
    ``modules``: the run's trainable groups in the order they were prepared (accelerate's ``model_<i>`` files).
    Checkpoints of unsharded runs (one process, DDP, DeepSpeed ZeRO-1/2) only: FSDP shards its files."""
    for i, module in enumerate(modules):
        name = SAFE_WEIGHTS_NAME if i == 0 else SAFE_WEIGHTS_NAME.replace(".", f"_{i}.")
        file = path / name
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing: the checkpoint has fewer networks than this run trains "
                                    f"({len(modules)}), or it was written sharded (FSDP)")
        for note in load_whole_submodules(accelerator.unwrap_model(module), load_file(file)):
            accelerator.print(f"{file.name}: {note}")
    if ema is not None and (path / EMA_FILE).is_file():
        ema.load_state_dict(load_file(path / EMA_FILE))


def load_whole_submodules(module: nn.Module, state: dict[str, Any]) -> list[str]:
    """``module.load_state_dict(state)``, except that a whole submodule on one side only is allowed: a stage that
    drops an add-on the earlier stage trained (a GAN head, for a no-GAN ablation from the shipped stage 1) leaves its
    weights out, and a stage that adds one starts it fresh. Anything else that does not match (missing or extra
    weights inside a shared submodule, other shapes) raises load_state_dict's RuntimeError. Returns what was skipped."""
    own = module.state_dict().keys()
    children = {name for name, _ in module.named_children()}
    extra = {k.split(".", 1)[0] for k in state.keys() - own}
    fresh = {k.split(".", 1)[0] for k in own - state.keys()}
    in_checkpoint = {k.split(".", 1)[0] for k in state}
    if extra & children or fresh & in_checkpoint:        # a partial submodule: another architecture, not an add-on
        module.load_state_dict(state)                    # raises, naming the keys
    module.load_state_dict({k: v for k, v in state.items() if k.split(".", 1)[0] not in extra}, strict=False)
    return ([f"left out {name} (this run has none)" for name in sorted(extra)]
            + [f"{name} starts fresh (the checkpoint has none)" for name in sorted(fresh)])
