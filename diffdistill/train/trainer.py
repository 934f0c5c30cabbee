"""The one training loop, on accelerate: every method trains through :func:`fit`.

Steps are counted from 1 in logs, checkpoints and messages (``step-000010`` holds the state after 10 steps); the
method's ``phases(step)`` and ``loss(..., step)`` get the 0-based index of the step being taken.

Per step the method names its phases (e.g. ``("student", "critic")`` or ``("critic",)``). Each phase runs
``grad_accum`` micro-batches, then steps only that phase's optimizer. Accumulation therefore happens inside a
phase, so a two time-scale ratio (DMD2 sec. 4.2: 5 critic updates per student update) is the same whatever the
accumulation. Gradients of every group are cleared before each phase, so a phase's backward through another
role (e.g. a GAN term through the critic) never leaks into that role's next update.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast, set_seed
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from .checkpoint import STATE_FILE, latest_checkpoint, load_weights, resume_checkpoint, save_checkpoint
from ..data import DataStream, batch_at, class_names
from .lineage import run_log_seconds, stages_before
from ..methods.base import Method, Prepared
from ..models.registry import save_model
from ..visual import save_samples, save_video

FAULT_ENV = "DIFFDISTILL_FAULT_AT_STEP"   # test hook: SIGKILL the run right after this step (simulates a crash)
METRICS_FILE = "metrics.jsonl"


@dataclass
class OptimizerConfig:
    """AdamW for one parameter group (DMD2 and Self-Forcing use betas (0, 0.999) for the critic)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    warmup_steps: int = 0             # linear warm-up of this group's lr over its first optimizer steps
    decay_steps: int = 0              # > 0: cosine decay over this many optimizer steps (0: constant after warm-up)
    decay_start: int = 0              # the optimizer step the decay begins at (e.g. where a continued run resumes)
    min_lr_ratio: float = 0.1         # the decay ends at lr * min_lr_ratio and stays there


@dataclass
class TrainerConfig:
    """The loop's settings. ``optimizers`` maps each of the method's parameter groups to its optimizer."""

    max_steps: int = 1000
    # stop earlier, at the first step where this run's training wall time (all its launches) reaches this many
    # seconds: methods compared at equal CPU time (the benchmarks' budgets); None: steps only
    max_seconds: float | None = None
    batch_size: int = 64              # per process and micro-batch
    grad_accum: int = 1               # micro-batches per optimizer step, within each phase
    optimizers: dict[str, OptimizerConfig] = field(default_factory=dict)
    clip_grad_norm: float | None = 1.0
    ema_decay: float | None = None    # EMA of `ema_group` (exported instead of the raw weights when set)
    ema_group: str | None = None      # default: the method's first group
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    seed: int = 0                     # per-rank seed = seed + rank
    log_every: int = 10
    sample_every: int = 0             # 0 = preview only at the end
    preview_count: int = 64
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_with: list[str] = field(default_factory=list)   # accelerate trackers: tensorboard, wandb (if installed)
    cpu: bool = False                 # force the CPU even when a GPU is present
    # a second stage: start from another run's checkpoint (a checkpoint folder, or a run dir for its newest one):
    # its weights and EMA, with fresh optimizers and this recipe's settings (DMD2's SD1.5 stage 2 starts so)
    init_from: str | None = None


class NonFiniteLossError(RuntimeError):
    """A loss became NaN/inf; nothing was stepped, the last complete checkpoint is intact."""


@dataclass
class FitResult:
    step: int
    run_dir: Path
    export_dir: Path
    last_logs: dict[str, float]
    first_step: int = 0               # the step this launch started from (== step: nothing left to train)
    train_seconds: float = 0.0        # the run's training wall time over all its launches


def validate_trainer_config(cfg: TrainerConfig, groups: tuple[str, ...]) -> None:
    """Check the numbers and the optimizer groups against the method before anything runs."""
    for name in ("max_steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "preview_count"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"trainer.{name} must be > 0, got {getattr(cfg, name)}")
    if cfg.sample_every < 0:
        raise ValueError(f"trainer.sample_every must be >= 0, got {cfg.sample_every}")
    if cfg.max_seconds is not None and cfg.max_seconds <= 0:
        raise ValueError(f"trainer.max_seconds must be > 0 (or null: no time limit), got {cfg.max_seconds}")
    unknown = sorted(set(cfg.optimizers) - set(groups))
    if unknown:
        raise ValueError(f"trainer.optimizers names unknown group(s) {unknown}; this method trains {list(groups)}")
    if cfg.ema_decay is not None and not 0.0 < cfg.ema_decay < 1.0:
        raise ValueError(f"trainer.ema_decay must lie in (0, 1), got {cfg.ema_decay}")
    if cfg.ema_group is not None and cfg.ema_group not in groups:
        raise ValueError(f"trainer.ema_group {cfg.ema_group!r} is not one of {list(groups)}")


class LaunchError(ValueError):
    """The processes a launcher started did not form one distributed job."""


def make_accelerator(cfg: TrainerConfig, run_dir: Path, partial_updates: bool = False) -> Accelerator:
    """The run's Accelerator. Under a multi-process launcher (torchrun, ``accelerate launch``: WORLD_SIZE > 1) on a
    machine without a GPU, accelerate forms the gloo job only when asked for the CPU, so that is asked for here; a
    launch that still forms no job of WORLD_SIZE processes is refused, since each process would then train alone
    into the same run folder.

    ``step_scheduler_with_optimizer=False``: accelerate otherwise steps a prepared LR scheduler once per process at
    every optimizer step (it assumes the per-process batch shrinks as processes are added), so warm-up would end
    ``num_processes`` times sooner; here each process keeps its own batch and the LR at step k does not depend on
    the number of processes.

    ``partial_updates`` (``Method.partial_updates``): a step leaves some parameters of a group without gradients (Phased
    DMD trains one expert of its student at a time), so DDP must look for unused parameters or it stops at the next
    step waiting for their gradients."""
    trackers = [t for t in cfg.log_with if t]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cpu = cfg.cpu or (world > 1 and not torch.cuda.is_available())
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true") and (cpu or not torch.cuda.is_available()):
        # accelerate (1.x) switches to FSDP only for jobs on accelerator devices: CPU processes would silently train
        # as plain DDP (MULTI_CPU), and without cpu=True they would form no process group at all
        raise LaunchError("accelerate's FSDP plugin shards only on GPUs (or other accelerators); on CPU processes "
                          "accelerate would run this job as DDP. Launch on GPUs, or drop --use_fsdp on CPUs "
                          "(`torchrun --nproc_per_node N -m diffdistill.cli train RECIPE` trains with DDP)")
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cpu, log_with=trackers or None,
                              project_dir=str(run_dir), step_scheduler_with_optimizer=False,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=partial_updates)])
    if accelerator.num_processes != world:
        raise LaunchError(f"launched as {world} processes (WORLD_SIZE={world}) but accelerate formed a job of "
                          f"{accelerator.num_processes}; each process would train alone into {str(run_dir)!r}. Launch "
                          "with `accelerate launch` or `torchrun` so that RANK, WORLD_SIZE and MASTER_ADDR are set "
                          "for every process, or run one process")
    return accelerator


def fit(method: Method, data: DataStream, cfg: TrainerConfig, run_dir: str | Path, accelerator: Accelerator,
        run_config: dict[str, Any] | None = None, start_lineage: list[dict[str, Any]] | None = None,
        quiet: bool = False) -> FitResult:
    """Train ``method`` on ``data`` until ``cfg.max_steps``, resuming from the newest checkpoint in ``run_dir``.

    The console shows a progress bar (steps, rate, time left) and, every ``cfg.log_every`` steps, one compact line of
    the losses averaged since the last line (``quiet``: neither; ``metrics.jsonl`` holds every logged value).

    ``start_lineage``: the earlier stages the trained network's starting weights already cost (an exported student
    it continues, ``lineage.stages_of_export``); a fresh run records them, a resumed run keeps its checkpoint's."""
    run_dir = Path(run_dir)
    check_data_shape(method, data)
    session = prepare_training(method, cfg, accelerator)
    ema, ema_group = session.ema, session.ema_group

    state: dict[str, Any] = {"step": 0, "data_position": 0}
    resumed = resume_checkpoint(accelerator, run_dir, ema)
    if resumed is not None:
        resume, state = resumed
        data.position = state["data_position"]
        accelerator.print(f"resumed from {resume} at step {state['step']}")
        if accelerator.is_main_process:
            _truncate_log(run_dir / METRICS_FILE, state["step"])
    elif cfg.init_from:
        source = init_checkpoint(cfg.init_from)
        try:
            load_weights(accelerator, source, [method.trainable()[g] for g in method.groups], ema)
        except RuntimeError as err:          # load_state_dict: missing / unexpected keys, other shapes
            raise ValueError(f"trainer.init_from: {source} does not fit this run's networks (another model, "
                             f"method or LoRA setting?): {err}") from err
        state["lineage"] = stages_before(source)
        accelerator.print(f"initialised from {source} (weights and EMA; fresh optimizers); this run counts from "
                          "step 0")
    elif start_lineage:
        state["lineage"] = list(start_lineage)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if accelerator.log_with:
            accelerator.init_trackers(run_dir.name, config=run_config or {})

    step, logs = state["step"], {}
    first_step = step
    names = class_names((run_config or {}).get("data", {}).get("name"), method.sampling_spec().num_classes)
    lineage = state.get("lineage", [])
    # this run's wall time before this launch (checkpoints older than the field: the run's own log)
    earlier_seconds = state.get("train_seconds")
    if earlier_seconds is None:
        earlier_seconds = (run_log_seconds(run_dir, step) or 0.0) if step else 0.0
    window: dict[str, list[float]] = {}     # key -> [sum, count] since the last log line
    console = accelerator.is_local_main_process and not quiet
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not console, desc="train", unit="step", dynamic_ncols=True)
    started = time.perf_counter()
    out_of_time = _out_of_time(accelerator, cfg, earlier_seconds)
    try:
        while step < cfg.max_steps and not out_of_time:
            for phase_logs in train_step(method, session, data, step, cfg, accelerator, run_dir):
                for key, value in phase_logs.items():
                    total = window.setdefault(key, [0.0, 0])
                    total[0], total[1] = total[0] + value, total[1] + 1
            step += 1
            bar.update(1)
            out_of_time = _out_of_time(accelerator, cfg, earlier_seconds + time.perf_counter() - started)
            final = step == cfg.max_steps or out_of_time
            if step % cfg.log_every == 0 or final:
                # means over the window: a phase that ran on any step since the last line is logged (TTUR methods)
                logs = {key: total / count for key, (total, count) in window.items()}
                window.clear()
                _log(accelerator, logs, step, run_dir, time.perf_counter() - started)
                # the losses go on a line of their own: a postfix would squeeze the bar to nothing on a narrow terminal
                if console:
                    terms = "  ".join(f"{k} {v}" for k, v in loss_terms(logs).items())
                    bar.write(f"step {step}/{cfg.max_steps}  {terms}")
            if cfg.sample_every and step % cfg.sample_every == 0 and accelerator.is_main_process:
                _preview(method, ema, ema_group, cfg, run_dir / "samples" / f"step-{step:06d}.png", data, names)
            if step % cfg.checkpoint_every == 0 or final:
                state = {"step": step, "data_position": data.position, "logs": logs, "lineage": lineage,
                         "train_seconds": round(earlier_seconds + time.perf_counter() - started, 3)}
                save_checkpoint(accelerator, run_dir, state, ema, cfg.keep_checkpoints)
            if os.environ.get(FAULT_ENV) == str(step):
                os.kill(os.getpid(), signal.SIGKILL)
    finally:
        bar.close()     # also when a NaN or an interrupt ends the run

    train_seconds = round(earlier_seconds + time.perf_counter() - started, 3)
    if out_of_time and step < cfg.max_steps:
        accelerator.print(f"stopped at step {step}: trainer.max_seconds={cfg.max_seconds} of training time reached")
    export_dir = run_dir / "export"
    if accelerator.is_main_process:
        _preview(method, ema, ema_group, cfg, run_dir / "samples" / "final.png", data, names)
        _save_export(method, ema, ema_group, export_dir,
                     {"run_config": run_config or {}, "sampling": method.sampling_spec().to_dict(),
                      "trained_steps": step, "train_seconds": train_seconds, "earlier_stages": lineage})
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return FitResult(step, run_dir, export_dir, logs, first_step, train_seconds)


@dataclass
class TrainingSession:
    """What one run's steps share: an optimizer and warm-up schedule per group, and the EMA of one group."""

    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    ema: AveragedModel | None
    ema_group: str


def check_data_shape(method: Method, data: DataStream) -> None:
    """Refuse data whose samples have another shape than the ones the networks draw (previews, exports and sampling
    use the model's ``data_shape``): caught here, not as an odd error deep inside a forward pass."""
    expected = getattr(method.role(method.groups[0]), "data_shape", None)
    got = tuple(batch_at(data, 0).x0.shape[1:])
    if expected is not None and got != tuple(expected):
        layout = "[T, C, H, W]" if len(got) == 4 else "[C, H, W]" if len(got) == 3 else "per sample"
        raise ValueError(f"the data gives samples of shape {list(got)} {layout} but the model samples "
                         f"{list(expected)}: make them agree (video: model.num_frames / height / width against "
                         "data.frames / size, or the latent size the clips were encoded at; images: the UNet's "
                         "sample_size against the data's resolution)")


def prepare_training(method: Method, cfg: TrainerConfig, accelerator: Accelerator) -> TrainingSession:
    """Validate ``cfg``, seed, move ``method`` to the device and let accelerate wrap each trainable group."""
    validate_trainer_config(cfg, method.groups)
    if method.requires_ema and cfg.ema_decay is None:
        raise ValueError(f"{type(method).__name__} reads the EMA of its network (its target): set trainer.ema_decay")
    method.check_schedules()
    set_seed(cfg.seed + accelerator.process_index)
    method.to(accelerator.device)
    groups = list(method.groups)
    optimizers = {g: _optimizer(method.param_groups()[g], cfg.optimizers.get(g, OptimizerConfig()), g) for g in groups}
    schedulers = {g: _warmup(optimizers[g], cfg.optimizers.get(g, OptimizerConfig())) for g in groups}
    for g in groups:   # one prepare per role: DDP/FSDP wrapping stays accelerate's job
        module, optimizers[g], schedulers[g] = accelerator.prepare(method.trainable()[g], optimizers[g], schedulers[g])
        method.attach(g, module)
    ema_group = cfg.ema_group or groups[0]
    ema = _make_ema(method.role(ema_group), cfg.ema_decay)
    method.bind_ema(ema)
    return TrainingSession(optimizers, schedulers, ema, ema_group)


def train_step(method: Method, session: TrainingSession, data: DataStream, step: int, cfg: TrainerConfig,
               accelerator: Accelerator, run_dir: Path) -> list[dict[str, float]]:
    """One training step: every phase ``method.phases(step)`` names (one optimizer update each, then the EMA and the
    method's ``after_update`` hook).
    Returns each phase's logs. Benchmarks time this to measure a method's step without checkpoints or exports."""
    out = []
    for phase in method.phases(step):
        out.append(_run_phase(method, phase, data, step, cfg, accelerator, session.optimizers, session.schedulers,
                              run_dir))
        if session.ema is not None and phase == session.ema_group:
            session.ema.update_parameters(method.role(session.ema_group))
        method.after_update(phase, step)
    return out


def init_checkpoint(path: str | Path) -> Path:
    """The checkpoint ``trainer.init_from`` names: a complete checkpoint folder, or a run dir's newest one."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    newest = latest_checkpoint(path)
    if newest is None:
        raise FileNotFoundError(f"trainer.init_from: {str(path)!r} is neither a complete checkpoint folder (with "
                                f"{STATE_FILE}) nor a run directory with one under checkpoints/")
    return newest


def _optimizer(params: list[nn.Parameter], ocfg: OptimizerConfig, group: str) -> torch.optim.Optimizer:
    if not params:
        raise ValueError(f"parameter group {group!r} has no trainable parameters")
    return torch.optim.AdamW(params, lr=ocfg.lr, betas=ocfg.betas, weight_decay=ocfg.weight_decay, eps=ocfg.eps)


def lr_factor(cfg: OptimizerConfig, i: int) -> float:
    """The lr multiplier after ``i`` optimizer steps: linear warm-up, then constant or a cosine decay from
    ``decay_start`` over ``decay_steps`` down to ``min_lr_ratio`` (Loshchilov & Hutter, arXiv:1608.03983, eq. 5)."""
    warm = min(1.0, (i + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.decay_steps <= 0:
        return warm
    progress = min(1.0, max(0.0, (i - cfg.decay_start) / cfg.decay_steps))
    return warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _warmup(opt: torch.optim.Optimizer, cfg: OptimizerConfig) -> torch.optim.lr_scheduler.LambdaLR:
    if cfg.decay_steps < 0 or cfg.decay_start < 0 or not 0.0 <= cfg.min_lr_ratio <= 1.0:
        raise ValueError(f"optimizer decay_steps and decay_start must be >= 0 and min_lr_ratio in [0, 1], got "
                         f"{cfg.decay_steps}, {cfg.decay_start}, {cfg.min_lr_ratio}")
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(cfg, i))


def _make_ema(module: nn.Module, decay: float | None) -> AveragedModel | None:
    if decay is None:
        return None
    return AveragedModel(module, multi_avg_fn=_ema_with_warmup(decay), use_buffers=True)


def _out_of_time(accelerator: Accelerator, cfg: TrainerConfig, seconds: float) -> bool:
    """Whether the run has spent ``trainer.max_seconds``: rank 0's clock decides for every rank (each rank's clock
    differs a little, and a rank that stopped alone would leave the others waiting in a collective)."""
    if cfg.max_seconds is None:
        return False
    flag = torch.tensor([float(seconds >= cfg.max_seconds)], device=accelerator.device)
    if accelerator.num_processes > 1:
        flag = broadcast(flag, from_process=0)
    return bool(flag.item())


def _ema_with_warmup(decay: float):
    """EMA whose decay ramps up as min(decay, (1 + n) / (10 + n)) over its n updates (diffusers' EMAModel warm-up).

    Without it a slow EMA (0.999) still gives the random initial weights 0.999^500 = 61% of the weight after 500
    steps, and early previews and exports are noise.
    """
    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        current = min(decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(ema_params, params, 1 - current)
    return update


def _run_phase(method: Method, phase: str, data: DataStream, step: int, cfg: TrainerConfig,
               accelerator: Accelerator, optimizers: dict, schedulers: dict, run_dir: Path) -> dict[str, float]:
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    with _only_trainable(method, phase):
        return _phase_updates(method, phase, data, step, cfg, accelerator, optimizers, schedulers, run_dir)


@contextlib.contextmanager
def _only_trainable(method: Method, phase: str) -> Iterator[None]:
    """During a phase, and its backward, only the phase's own group requires gradients: a loss that runs another
    role with gradients (a GAN generator term through the critic) computes no gradients for that role's weights,
    and that role's DDP gradient hooks never fire outside its own forward (which would break its next reduction).
    The gradient still flows through the frozen role to its inputs."""
    frozen = [p for group, module in method.trainable().items() if group != phase
              for p in module.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _phase_updates(method: Method, phase: str, data: DataStream, step: int, cfg: TrainerConfig,
                   accelerator: Accelerator, optimizers: dict, schedulers: dict, run_dir: Path) -> dict[str, float]:
    module = getattr(method, phase)
    module = module.wrapped if isinstance(module, Prepared) else module       # accelerate's wrapper (DDP's no_sync)
    totals: dict[str, float] = {}
    for micro in range(cfg.grad_accum):
        batch = data.next().to(accelerator.device)
        # Skip the DDP gradient all-reduce on all but the last micro-batch of the phase.
        sync = accelerator.no_sync(module) if micro < cfg.grad_accum - 1 else contextlib.nullcontext()
        with sync:
            with accelerator.autocast():
                loss, logs = method.loss(phase, batch, step)
            _check_finite(accelerator, loss, phase, step, run_dir)
            accelerator.backward(loss / cfg.grad_accum)
        for key, value in logs.items():
            totals[key] = totals.get(key, 0.0) + float(value) / cfg.grad_accum
    if cfg.clip_grad_norm:
        norm = accelerator.clip_grad_norm_(method.param_groups()[phase], cfg.clip_grad_norm)
        totals[f"{phase}/grad_norm"] = float(norm)
    optimizers[phase].step()
    schedulers[phase].step()
    totals[f"{phase}/lr"] = schedulers[phase].get_last_lr()[0]
    return totals


def _check_finite(accelerator: Accelerator, loss: torch.Tensor, phase: str, step: int, run_dir: Path) -> None:
    # All ranks must agree, or one rank would stop while the others wait in the next collective.
    bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=accelerator.device)
    if float(accelerator.reduce(bad, reduction="sum")) > 0:
        last = latest_checkpoint(run_dir)
        raise NonFiniteLossError(
            f"the {phase} loss is {loss.item()} at step {step + 1}; no parameters were updated in that step. The last good checkpoint "
            f"is {last or 'none (no checkpoint written yet)'}; rerunning resumes from it. Lower the learning rate, "
            "enable clipping (trainer.clip_grad_norm) or check the data for NaNs.")


def _log(accelerator: Accelerator, logs: dict[str, float], step: int, run_dir: Path, elapsed: float) -> None:
    row = {"step": step, "time_s": round(elapsed, 3), "peak_mem_mb": round(peak_memory_mb(accelerator.device), 1),
           **logs}
    if accelerator.is_main_process:
        with open(run_dir / METRICS_FILE, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if accelerator.log_with:
            accelerator.log(logs, step=step)


def peak_memory_mb(device: torch.device) -> float:
    """The run's peak memory so far: allocated tensors on an accelerator, the process's peak resident set on the CPU
    (what an ablation such as self forcing without gradient truncation costs)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024        # Linux reports kilobytes


def loss_terms(logs: dict[str, float]) -> dict[str, str]:
    """The loss values of a log row for the console, under their full names (``student/gan`` and ``critic/gan`` are
    different numbers): learning rates, gradient norms and indices stay in metrics.jsonl."""
    skip = ("/lr", "grad_norm", "/k")
    return {k: f"{v:.4g}" for k, v in logs.items() if not k.endswith(skip)}


def _truncate_log(path: Path, step: int) -> None:
    """Drop the log lines of steps after the checkpoint a run resumes from (a run killed past its last checkpoint
    logged steps it will now take again) and any line cut short by the kill, so the log stays one line per logged
    step, in order. The file is rewritten atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


@contextlib.contextmanager
def _ema_weights(method: Method, ema: AveragedModel | None, ema_group: str) -> Iterator[None]:
    """Inside: the EMA group's role holds the EMA weights (when there is an EMA); after: its own weights again, so a
    preview or an export on the main process never leaves the ranks' training weights apart."""
    role = method.role(ema_group)
    backup = None
    if ema is not None:
        backup = {k: v.detach().clone() for k, v in role.state_dict().items()}
        role.load_state_dict(ema.module.state_dict())
    try:
        yield
    finally:
        if backup is not None:
            role.load_state_dict(backup)


def _save_export(method: Method, ema: AveragedModel | None, ema_group: str, export_dir: Path,
                 meta: dict[str, Any]) -> None:
    """Write the method's export model, with the EMA weights when the EMA is of that very role (an EMA of another
    role, e.g. the critic, is not the export's)."""
    model = method.export_model()
    use_ema = ema is not None and model is method.role(ema_group)
    with _ema_weights(method, ema if use_ema else None, ema_group):
        save_model(model, export_dir, meta)


def _preview(method: Method, ema: AveragedModel | None, ema_group: str, cfg: TrainerConfig, path: Path,
             data: DataStream, names: list[str]) -> None:
    """Sample with the EMA weights when there are any (swapped in for the call, then restored); text models take
    the prompts of the data's batch 0 (the same images at every preview, and in an export that took no step)."""
    with _ema_weights(method, ema, ema_group):
        device = next(method.role(ema_group).parameters()).device
        samples = method.preview(cfg.preview_count, batch=batch_at(data, 0).to(device))
        # class models preview classes 0, 1, ..., C-1, 0, ... (Method.preview_cond): a row per class in the grid
        labels = torch.arange(samples.shape[0]) % len(names) if names else None
        save_samples(samples, path, title=path.stem, labels=labels, class_names=names)
        if samples.dim() == 5:                    # video: the clips move in a GIF next to the frame strips
            save_video(samples, path.with_suffix(".gif"), labels=labels, class_names=names)
    if not math.isfinite(float(samples.float().abs().mean())):
        raise NonFiniteLossError(f"preview samples at {path.name} are not finite")
