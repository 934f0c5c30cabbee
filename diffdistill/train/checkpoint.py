"""Checkpoints for resume (accelerate state + our own trainer state) written atomically, and the student export.

Layout of a run directory::

    run_dir/config.yaml                  the resolved recipe
    run_dir/metrics.jsonl                one JSON line per logged step
    run_dir/checkpoints/step-000100/     accelerate.save_state (models as safetensors, optimizers, RNG states)
                        trainer_state.json  step, data position, last loss, wall time, earlier stages
                        ema.safetensors     EMA weights (if any)
    run_dir/export/                      the exported student (diffdistill.json + weights; diffusers layout for UNet/Wan)

A checkpoint is written to ``checkpoints/.tmp-step-N`` and renamed into place only when every rank has written its
part, so a run killed mid-save (SIGKILL, power loss) leaves the previous checkpoint as the latest complete one. Our
trainer state is JSON and safetensors (accelerate's own custom-object hook would pickle it with ``weights_only=False``).

``trainer_state.json`` also lists every file of the checkpoint with its size and SHA-256 (files over
``FULL_HASH_BYTES``: a digest of their first and last MiB, so saving a 10 GB SDXL state stays cheap) and the number
of processes that wrote it. A resume checks them: a truncated, garbage or tampered file (a model's safetensors, a
rank's ``random_states_<i>.pkl``) makes that checkpoint unusable, and the run falls back to the previous complete one
and says so, instead of failing with a bare parser traceback or, worse, going on without a rank's RNG state.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import SAFE_WEIGHTS_NAME
from safetensors.torch import save_file
from torch import nn

from ..files import DamagedFileError, load_safetensors

STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
RNG_FILE = "random_states_{rank}.pkl"        # accelerate's per-rank RNG state (checkpointing.RNG_STATE_NAME)
LOCK_FILE = ".run.lock"
FULL_HASH_BYTES = 256 * 2**20                # larger files: SHA-256 of the first and last MiB, plus their size
_EDGE = 2**20


class CheckpointError(ValueError):
    """No checkpoint of a run can be resumed (each is damaged, or was written by another number of processes)."""


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (temporary folders of interrupted saves are ignored)."""
    done = complete_checkpoints(run_dir)
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
    # every rank writes its own random_states_<rank>.pkl: the folder is complete only when all of them are done
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if ema is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}, tmp / EMA_FILE)
        state = {**state, "world_size": accelerator.num_processes, "files": file_manifest(tmp)}
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


def file_digest(path: Path) -> str:
    """SHA-256 of the file, or of its first and last MiB for files over FULL_HASH_BYTES (see the module docstring)."""
    h, size = hashlib.sha256(), path.stat().st_size
    with open(path, "rb") as fh:
        if size <= FULL_HASH_BYTES:
            for block in iter(lambda: fh.read(2**20), b""):
                h.update(block)
        else:
            h.update(fh.read(_EDGE))
            fh.seek(size - _EDGE)
            h.update(fh.read(_EDGE))
    return h.hexdigest()


def file_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {size, sha256}} of every file under ``folder`` except the trainer state itself."""
    return {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": file_digest(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != STATE_FILE}


def checkpoint_problem(path: Path, world_size: int) -> str | None:
    """Why checkpoint ``path`` cannot be resumed by a run of ``world_size`` processes, or None if it can.

    Checks the trainer state parses, every rank's RNG file is there, and every file has the size and digest the
    manifest recorded. Raises CheckpointError when the checkpoint is intact but was written by another number of
    processes: older checkpoints cannot help then, and the user must choose."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as err:
        return f"{STATE_FILE} is unreadable ({err})"
    written_by = state.get("world_size")
    if written_by is not None and written_by != world_size:
        raise CheckpointError(f"{path} was written by {written_by} process(es) but this run has {world_size}: each "
                              "rank resumes its own RNG state. Relaunch with the same number of processes, or start "
                              "a new stage from it with trainer.init_from=... and a new output_dir")
    missing = [RNG_FILE.format(rank=r) for r in range(world_size) if not (path / RNG_FILE.format(rank=r)).is_file()]
    if missing:
        return f"the RNG state of rank(s) {missing} is missing"
    for name, want in state.get("files", {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != want["size"]:
            return f"{name} has {file.stat().st_size} bytes, {want['size']} were written (truncated or replaced)"
        if file_digest(file) != want["sha256"]:
            return f"{name} does not match the SHA-256 recorded when it was written (damaged or tampered with)"
    return None


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    return sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file()) if root.is_dir() else []


def resume_checkpoint(accelerator: Accelerator, run_dir: Path, ema: nn.Module | None) -> tuple[Path, dict] | None:
    """Restore the newest usable checkpoint of ``run_dir``; returns (its path, trainer state), or None if the run has
    no checkpoint. A damaged one is skipped with a warning naming the file, and the previous one is tried; if none
    is usable, CheckpointError says what to do. Damaged folders are left in place for inspection."""
    candidates = complete_checkpoints(run_dir)[::-1]
    skipped: list[str] = []
    for path in candidates:
        problem = checkpoint_problem(path, accelerator.num_processes)
        if problem is None:
            try:
                return path, load_checkpoint(accelerator, path, ema)
            except (DamagedFileError, RuntimeError, OSError, ValueError) as err:
                problem = f"it does not load: {err}"
        skipped.append(f"{path.name}: {problem}")
        accelerator.print(f"warning: checkpoint {path} is damaged and is skipped: {problem}. "
                          + ("Trying the previous one." if path != candidates[-1] else ""))
    if skipped:
        raise CheckpointError(f"no checkpoint of {run_dir} can be resumed ({'; '.join(skipped)}). Restore the files, "
                              "or move checkpoints/ aside to train from scratch (or pick a new output_dir=...)")
    return None


def load_checkpoint(accelerator: Accelerator, path: Path, ema: nn.Module | None) -> dict[str, Any]:
    """Restore accelerate state (models, optimizers, RNG) and return our trainer state."""
    from accelerate.utils import load as accelerate_load

    accelerator.load_state(str(path))
    # accelerate skips an RNG file it cannot read with only an info log; a resume must not go on silently without it
    rng = path / RNG_FILE.format(rank=accelerator.process_index)
    try:
        accelerate_load(rng)
    except Exception as err:      # an unpickling error of any kind: the file is not the state that was written
        raise DamagedFileError(f"{rng} cannot be read as an RNG state ({type(err).__name__}: {err})") from None
    if ema is not None:
        ema_file = path / EMA_FILE
        if not ema_file.is_file():
            raise FileNotFoundError(f"{path} has no {EMA_FILE} but this run keeps an EMA; resume with the recipe the "
                                    "checkpoint was written with")
        ema.load_state_dict(load_safetensors(ema_file))
    return json.loads((path / STATE_FILE).read_text())


class RunLockedError(ValueError):
    """Another process is training into the same output_dir."""


class RunLock:
    """Exclusive lock on a run folder for the lifetime of a training process (the main process of a job).

    Two processes that each believe they are the main process (a multi-process launch that formed no job, or two
    `diffdistill train` commands on one output_dir) would otherwise interleave checkpoints and logs in one folder.
    The kernel drops the lock when its process dies, so a killed run never leaves a stale lock behind."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.fh = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "another process"
            self.fh.close()
            raise RunLockedError(f"output_dir {str(self.path.parent)!r} is in use by {holder}: two runs must not write "
                                 "one run folder. Wait for it to finish, stop it, or pick another output_dir=...") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"pid {os.getpid()}")
        self.fh.flush()

    def release(self) -> None:
        if self.fh is not None:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None


@contextmanager
def run_lock(accelerator: Accelerator, run_dir: Path) -> Iterator[None]:
    """Hold the run folder's :class:`RunLock` on the main process; every rank raises if it is taken (so no rank
    waits forever in a collective for a main process that gave up)."""
    lock, problem = RunLock(run_dir), None
    if accelerator.is_main_process:
        try:
            lock.acquire()
        except RunLockedError as err:
            problem = err
    failed = accelerator.reduce(torch.tensor([float(problem is not None)], device=accelerator.device), "sum")
    if float(failed) > 0:
        raise problem or RunLockedError(f"output_dir {str(run_dir)!r} is in use by another run")
    try:
        yield
    finally:
        lock.release()


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
        for note in load_whole_submodules(accelerator.unwrap_model(module), load_safetensors(file)):
            accelerator.print(f"{file.name}: {note}")
    if ema is not None and (path / EMA_FILE).is_file():
        ema.load_state_dict(load_safetensors(path / EMA_FILE))


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
