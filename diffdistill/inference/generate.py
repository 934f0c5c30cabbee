"""Sampling an exported model with the settings its export records: the one place that turns an export's
``sampling`` metadata (sampler, steps, times, guidance, classes) plus user overrides into images.

Teachers export ``sampler: ode`` (DDIM / Euler on a step grid, CFG in the standard form); distilled students export
``sampler: few_step`` with the fixed ``times`` they were trained on (DMD2 sec. 4.5). Overriding ``steps`` on a
few-step student samples it on a uniform grid instead, which it was not trained for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..models.base import Cond, DiffusionModel, guided
from .sampling import few_step_sample, ode_sample


@dataclass
class SamplingPlan:
    """What will be run: sampler, the time grid (noisy -> clean, in [0, 1]), CFG scale and the class count."""

    sampler: str
    times: list[float]
    guidance: float
    num_classes: int

    @property
    def steps(self) -> int:
        return len(self.times)

    @property
    def nfe(self) -> int:
        """Network evaluations per image: CFG doubles each step when a class model is guided."""
        return self.steps * (2 if self.num_classes and self.guidance != 1.0 else 1)

    def run(self, net: DiffusionModel, noise: Tensor, cond: Cond | None = None,
            generator: torch.Generator | None = None) -> Tensor:
        """One batch: ``net`` (already guided if wanted) from ``noise`` [B, ...] to x0 [B, ...] on this plan's times;
        ``generator`` draws the few-step sampler's fresh re-noising noise."""
        times = torch.tensor(self.times, dtype=torch.float64)
        if self.sampler == "ode":
            return ode_sample(net, noise, times, cond)
        return few_step_sample(net, noise, times, cond, generator=generator)


def plan_sampling(model: DiffusionModel, info: dict, steps: int | None = None, sampler: str | None = None,
                  guidance: float | None = None) -> SamplingPlan:
    """The export's sampling settings (``info`` = diffdistill.json's "sampling") with optional overrides."""
    sampler = sampler or info.get("sampler", "ode")
    if sampler not in ("ode", "few_step"):
        raise ValueError(f"sampler must be 'ode' or 'few_step', got {sampler!r}")
    if steps is not None and steps <= 0:
        raise ValueError(f"steps must be > 0, got {steps}")
    own_times = info.get("times") if sampler == "few_step" else None
    if own_times and steps in (None, len(own_times)):
        times = [float(t) for t in own_times]
    else:
        grid = model.schedule.step_grid(steps or info.get("steps", 50), info.get("spacing", "trailing"))
        times = [float(t) for t in grid]
    return SamplingPlan(sampler, times, float(guidance if guidance is not None else info.get("guidance", 1.0)),
                        int(info.get("num_classes", 0)))


def class_labels(n: int, num_classes: int) -> Tensor | None:
    """Class-balanced labels 0, 1, ..., C-1, 0, 1, ... (None for unconditional models)."""
    return torch.arange(n) % num_classes if num_classes else None


@torch.no_grad()
def generate(model: DiffusionModel, plan: SamplingPlan, n: int, seed: int = 0, batch_size: int = 256,
             labels: Tensor | None = None, progress: bool = True, text: Cond | None = None,
             uncond: Cond | None = None) -> tuple[Tensor, Tensor | None, float]:
    """``n`` samples [n, *data_shape] in batches, their labels, and the sampling wall time in seconds (noise
    drawing and batching excluded). Reproducible: one generator seeded with ``seed`` draws all noise.

    Text models: ``text`` is the prompt condition of each sample (batch n) and ``uncond`` its empty-prompt
    condition, which CFG needs when ``plan.guidance`` is not 1 (side_by_side.PromptConditioner encodes both)."""
    if n <= 0 or batch_size <= 0:
        raise ValueError(f"n and batch_size must be > 0, got n={n}, batch_size={batch_size}")
    if text is not None and text.batch_size != n:
        raise ValueError(f"text holds {text.batch_size} conditions for {n} samples; give one per sample")
    labels = labels if labels is not None or text is not None else class_labels(n, plan.num_classes)
    noise = torch.randn(n, *model.data_shape, generator=torch.Generator().manual_seed(seed))
    device = next(model.parameters()).device
    renoise_gen = torch.Generator(device).manual_seed(seed + 1)     # the few-step sampler's fresh noise
    net = guided(model, plan.guidance) if labels is not None else model
    out, seconds = [], 0.0
    for i in tqdm(range(0, n, batch_size), desc=f"sampling {plan.steps} steps", disable=not progress, leave=False):
        cond = Cond(labels=labels[i:i + batch_size].to(device)) if labels is not None else None
        if text is not None:
            cond = text.map(lambda v: v[i:i + batch_size].to(device))
            part = uncond.map(lambda v: v[i:i + batch_size].to(device)) if uncond is not None else None
            net = guided(model, plan.guidance, part)
        x = noise[i:i + batch_size].to(device)
        start = time.perf_counter()
        x = plan.run(net, x, cond, renoise_gen)
        if x.is_cuda:
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        out.append(x.cpu())
    return torch.cat(out), labels, seconds
