"""Samplers as plain functions over the model contract. Training and inference call the same functions.

* :func:`ode_sample`: the teacher's deterministic sampler (DDIM eta=0 = Euler on the probability-flow ODE; for
  rectified flow exactly Euler), with CFG through :func:`~diffdistill.models.base.guided`.
* :func:`few_step_sample`: the re-noising sampler of DMD2 / LCM-style students on explicit times: predict x0,
  re-noise it with FRESH noise to the next time, repeat (DMD2 sec. 4.5; LCM Alg. 1).
* :func:`tcd_sample`: trajectory consistency sampling (TCD, arXiv:2402.19159 sec. 4.3; Hyper-SD's unified student):
  jump along the trajectory to s = (1 - eta) t_next, then re-noise from s to t_next with fresh noise; eta = 0 is
  :func:`ode_sample`'s DDIM, eta = 1 re-noises the x0 prediction like :func:`few_step_sample`.
* :func:`backward_simulate`: the no-grad part of that rollout, used to build the student's training input at step k
  (DMD2 sec. 4.5): the input at step 0 is pure noise and every later input comes from the student's OWN rollout,
  never from noised real data (the trap of DiffSynth-Studio#1627 and FastVideo#743).

Times are our continuous ``t`` (1 = noise); a trailing clean point is implicit: the last step returns x0.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..models.base import Cond, DiffusionModel

StepCallback = Callable[[int, Tensor, Tensor], None]    # (step index, x_t before the step, predicted x0)
FreshNoise = Callable[[int], Tensor]    # step index i -> the noise that re-noises step i's x0 (inference/noise.py)


def _times(ts: Sequence[float] | Tensor) -> Tensor:
    ts = torch.as_tensor(ts, dtype=torch.float64).flatten()
    if ts.numel() == 0:
        raise ValueError("need at least one sampling time")
    if bool(((ts < 0) | (ts > 1)).any()):
        raise ValueError(f"sampling times must lie in [0, 1] (1 = noise), got {ts.tolist()}")
    if bool((ts[1:] >= ts[:-1]).any()):
        raise ValueError(f"sampling times must decrease strictly from noisy to clean, got {ts.tolist()}")
    return ts


def _t_batch(t: Tensor, x: Tensor) -> Tensor:
    # float64 until the adapter's model_time: 499/999 in float32 would reach the network as timestep 499.00003
    return t.to(device=x.device, dtype=torch.float64).expand(x.shape[0])


@torch.no_grad()
def ode_sample(model: DiffusionModel, noise: Tensor, ts: Sequence[float] | Tensor, cond: Cond | None = None, *,
               progress: bool = False, callback: StepCallback | None = None) -> Tensor:
    """Deterministic DDIM / Euler sampling from ``noise`` at ``ts[0]`` down to clean data.

    The noise is used as x at ts[0] directly (for VP tables ts[0] = 1 is not exactly pure noise; like diffusers'
    DDIM we start from unit Gaussian noise there). Returns the final x0 prediction.
    Shapes: noise [B, ...] -> [B, ...].
    """
    ts = _times(ts)
    x = noise
    for i in tqdm(range(len(ts)), disable=not progress, desc="sampling", leave=False):
        pred = model(x, _t_batch(ts[i], x), cond)
        if callback is not None:
            callback(i, x, pred.x0)
        if i == len(ts) - 1:
            return pred.x0
        x = model.schedule.ddim_step(x, pred.x0, pred.eps, _t_batch(ts[i + 1], x))
    raise AssertionError("unreachable")


def renoise(model: DiffusionModel, x0: Tensor, t: Tensor, generator: torch.Generator | None = None,
            eps: Tensor | None = None) -> Tensor:
    """Fresh-noise re-noising of a predicted x0 to time t (the multi-step student's transition). The noise is
    ``eps`` when given, else drawn from ``generator`` (the global RNG when None: training)."""
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return model.schedule.add_noise(x0, eps.to(device=x0.device, dtype=x0.dtype), _t_batch(t, x0))


def backward_simulate(model: DiffusionModel, noise: Tensor, ts: Sequence[float] | Tensor, k: int,
                      cond: Cond | None = None, generator: torch.Generator | None = None,
                      fresh_noise: FreshNoise | None = None, euler: bool = False) -> Tensor:
    """The student's input at step ``k`` of its own ``ts`` rollout, without gradients (DMD2 sec. 4.5).

    k = 0 returns ``noise`` itself (pure noise at ts[0]); for k > 0 the student runs steps 0..k-1 from that noise,
    re-noising each x0 prediction with fresh noise to the next time, or with ``euler`` stepping deterministically
    like :func:`ode_sample` (a student that moves with Euler / DDIM between its times: Phased DMD, arXiv:2510.27684
    sec. 3). Shapes: noise [B, ...] -> [B, ...].
    """
    ts = _times(ts)
    if not 0 <= k < len(ts):
        raise ValueError(f"backward-simulation step k={k} is outside 0..{len(ts) - 1} for {len(ts)} student steps")
    x = noise
    with torch.no_grad():
        for i in range(k):
            pred = model(x, _t_batch(ts[i], x), cond)
            if euler:
                x = model.schedule.ddim_step(x, pred.x0, pred.eps, _t_batch(ts[i + 1], x))
            else:
                x = renoise(model, pred.x0, ts[i + 1], generator, fresh_noise(i) if fresh_noise is not None else None)
    return x


def few_step_sample(model: DiffusionModel, noise: Tensor, ts: Sequence[float] | Tensor, cond: Cond | None = None,
                    generator: torch.Generator | None = None, fresh_noise: FreshNoise | None = None) -> Tensor:
    """The few-step student sampler on explicit times: x0 = model(x, ts[i]); x = renoise(x0, ts[i+1]); ...

    Gradients flow only through the last call (the earlier ones are :func:`backward_simulate`), which is exactly
    the student's training forward at the last step. The fresh noise comes from ``fresh_noise(i)`` (inference's
    per-sample rule), else ``generator`` (a diffusers pipeline's draws), else the global RNG (training).
    Returns the final x0. Shapes: noise [B, ...] -> [B, ...].
    """
    ts = _times(ts)
    x = backward_simulate(model, noise, ts, len(ts) - 1, cond, generator, fresh_noise)
    return model(x, _t_batch(ts[-1], x), cond).x0


@torch.no_grad()
def tcd_sample(model: DiffusionModel, noise: Tensor, ts: Sequence[float] | Tensor, cond: Cond | None = None, *,
               eta: float = 0.3, generator: torch.Generator | None = None,
               fresh_noise: FreshNoise | None = None, stop: int | None = None) -> Tensor:
    """TCD's strategic stochastic sampling on explicit times (diffusers' ``TCDScheduler.step``, whose ``eta`` is the
    paper's gamma): at t_i predict (x0, eps), step deterministically to s = schedule.tcd_time(t_{i+1}, eta), then
    noise from s to t_{i+1} with fresh noise (``fresh_noise(i)``, else ``generator``, else the global RNG; none is
    drawn when eta = 0 or at the last step). The last step lands on t = 0 of the schedule (VP: the table's first
    entry, as diffusers returns it). ``stop``: return the rollout's state at ts[stop] instead (before the model
    is called there; reward feedback's stopping point, methods/reward_feedback.py). Shapes: noise [B, ...] -> [B, ...].
    """
    ts = _times(ts)
    if stop is not None and not 0 <= stop < len(ts):
        raise ValueError(f"stop={stop} is outside 0..{len(ts) - 1} for {len(ts)} TCD steps")
    schedule, x = model.schedule, noise
    for i in range(len(ts)):
        if i == stop:
            return x
        pred = model(x, _t_batch(ts[i], x), cond)
        t_next = ts[i + 1] if i + 1 < len(ts) else torch.tensor(0.0, dtype=torch.float64)
        s = schedule.tcd_time(t_next, eta)
        x = schedule.ddim_step(x, pred.x0, pred.eps, _t_batch(s, x))
        if i + 1 < len(ts) and eta > 0:
            eps = fresh_noise(i) if fresh_noise is not None else torch.randn(
                x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = schedule.add_noise_from(x, eps.to(device=x.device, dtype=x.dtype), _t_batch(t_next, x),
                                        _t_batch(s, x))
    return x
