"""The one sampling path: an exported model, its :class:`~.spec.SamplingSpec`, a seed -> samples.

``diffdistill sample``, ``diffdistill eval``, the demo (inference/side_by_side.py) and the benchmark scripts
(evaluation/) all call :func:`generate`, so the same export and seed give the same samples everywhere. Noise follows
the per-sample rule of :mod:`.noise`; conditions are class labels 0, 1, ..., C-1, 0, ... (class models, unless
given) or one prompt condition per sample (text models, encoded by side_by_side.PromptConditioner).

Teachers export ``sampler: ode`` (DDIM / Euler on a step grid, CFG in the standard form); distilled students export
``sampler: few_step`` with the fixed ``times`` they were trained on (DMD2 sec. 4.5, arXiv:2405.14867).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..models.base import Cond, DiffusionModel, guided
from ..models.registry import read_export_meta
from .noise import SampleNoise
from .sampling import few_step_sample, ode_sample, tcd_sample
from .streaming import causal_sample, stream_chunks
from .spec import Sampler, SamplingSpec


def export_spec(directory: str | Path, model: DiffusionModel, steps: int | None = None,
                sampler: Sampler | None = None, guidance: float | None = None,
                eta: float | None = None, ffe: int | None = None) -> SamplingSpec:
    """The sampling spec an export records (``diffdistill.json``), with a user's overrides."""
    info = read_export_meta(directory).get("sampling", {})
    return SamplingSpec.from_dict(info, model.schedule).override(model.schedule, steps, sampler, guidance, eta, ffe)


def user_spec(directory: str | Path, model: DiffusionModel, steps: int | None, sampler: Sampler | None,
              guidance: float | None, off_schedule: bool, eta: float | None = None,
              ffe: int | None = None) -> SamplingSpec:
    """:func:`export_spec` for a user's command-line choices: a distilled student sampled off the steps it was
    trained for is refused unless ``off_schedule`` (then warned on stderr)."""
    problem = export_spec(directory, model).off_schedule(steps, sampler)
    if problem and not off_schedule:
        raise ValueError(f"{problem}. Sample it as exported (drop --steps / --sampler), or pass --off-schedule")
    if problem:
        print(f"warning: {problem}", file=sys.stderr)
    return export_spec(directory, model, steps, sampler, guidance, eta, ffe)


def class_labels(n: int, num_classes: int, first: int = 0) -> Tensor | None:
    """Class-balanced labels (first % C), (first + 1) % C, ... (None for unconditional models)."""
    return (torch.arange(first, first + n) % num_classes) if num_classes else None


def chunk_noise(rule: SampleNoise, indices: list[int], chunk_frames: int,
                device: torch.device) -> Callable[[int, int], Tensor]:
    """The streaming sampler's fresh noise: chunk k's frames of the per-sample noise of step j (noise.py's rule, so a
    causal sample equals its un-streamed draw). Each step's whole-clip noise is drawn once, not once per chunk."""
    drawn: dict[int, Tensor] = {}

    def fresh(k: int, j: int) -> Tensor:
        if j not in drawn:
            drawn[j] = rule.fresh(indices, j).to(device)
        return drawn[j][:, k * chunk_frames:(k + 1) * chunk_frames]

    return fresh


def run_spec(spec: SamplingSpec, net: DiffusionModel, noise: Tensor, cond: Cond | None, noise_rule: SampleNoise,
             indices: list[int]) -> Tensor:
    """One batch on ``spec``'s times: ``net`` (already guided if wanted) from ``noise`` [B, ...] to x0 [B, ...]."""
    times = torch.tensor(spec.times, dtype=torch.float64)
    if spec.chunk_frames:                  # causal students: chunk by chunk, each chunk on the few-step times
        return causal_sample(net, noise, times, cond, fresh=chunk_noise(noise_rule, indices, spec.chunk_frames,
                                                                         noise.device),
                             first_times=spec.first_chunk_times)
    if spec.sampler == "ode":
        return ode_sample(net, noise, times, cond)
    if spec.sampler == "tcd":
        return tcd_sample(net, noise, times, cond, eta=spec.eta, fresh_noise=lambda i: noise_rule.fresh(indices, i))
    return few_step_sample(net, noise, times, cond, fresh_noise=lambda i: noise_rule.fresh(indices, i))


@torch.no_grad()
def generate(model: DiffusionModel, spec: SamplingSpec, n: int, seed: int = 0, batch_size: int = 256,
             labels: Tensor | None = None, progress: bool = True, text: Cond | None = None,
             uncond: Cond | None = None, first: int = 0) -> tuple[Tensor, Tensor | None, float]:
    """Samples ``first .. first + n - 1`` of the draw seeded ``seed``: [n, *data_shape], their labels, and the
    sampling wall time in seconds (noise drawing excluded; CUDA synchronised).

    Class models get ``labels`` (default: class-balanced, continuing from ``first``); text models get ``text``, one
    prompt condition per sample (batch n), and ``uncond``, its empty-prompt condition, which CFG needs when
    ``spec.guidance`` is not 1. Sample i depends only on (export, spec, seed, i, its condition) (see :mod:`.noise`).
    """
    if n <= 0 or batch_size <= 0:
        raise ValueError(f"n and batch_size must be > 0, got n={n}, batch_size={batch_size}")
    if text is not None and text.batch_size != n:
        raise ValueError(f"text holds {text.batch_size} conditions for {n} samples; give one per sample")
    if labels is None and text is None:
        labels = class_labels(n, spec.num_classes, first)
    device = next(model.parameters()).device
    rule = SampleNoise(seed, model.data_shape)
    out, seconds = [], 0.0
    for i in tqdm(range(0, n, batch_size), desc=f"sampling ({spec.steps}-step {spec.sampler})", unit="batch", disable=not progress,
                  leave=False):
        indices = list(range(first + i, first + min(i + batch_size, n)))
        net, cond = model, None
        if labels is not None:
            cond, net = Cond(labels=labels[i:i + batch_size].to(device)), guided(model, spec.guidance)
        elif text is not None:
            cond = text.map(lambda v: v[i:i + batch_size].to(device))
            part = uncond.map(lambda v: v[i:i + batch_size].to(device)) if uncond is not None else None
            net = guided(model, spec.guidance, part)
        x = rule.initial(indices).to(device)
        sync(device)
        start = time.perf_counter()
        x = run_spec(spec, net, x, cond, rule, indices)
        sync(device)
        seconds += time.perf_counter() - start
        out.append(x.cpu())
    return torch.cat(out), labels, seconds


def stream(model: DiffusionModel, spec: SamplingSpec, n: int, seed: int = 0, labels: Tensor | None = None,
           frames: int | None = None, first: int = 0) -> Iterator[tuple[int, Tensor, float]]:
    """A causal student's samples ``first .. first + n - 1`` chunk by chunk, as each chunk is ready: (chunk index,
    its x0 [n, chunk_frames, ...] on the CPU, seconds since the start). ``frames`` latent frames in all (default: the
    model's own length; more rolls past it, which a model with a cache window keeps bounded). At the default length
    the chunks are exactly :func:`generate`'s samples (the same noise rule, the same rollout)."""
    if not spec.chunk_frames:
        raise ValueError("streaming needs a causal student (an export whose sampling has chunk_frames > 0, e.g. from "
                         "the self_forcing method); sample other models without --stream")
    shape = (frames or model.data_shape[0], *model.data_shape[1:])
    device = next(model.parameters()).device
    labels = labels if labels is not None else class_labels(n, spec.num_classes, first)
    cond = Cond(labels=labels.to(device)) if labels is not None else None
    rule, indices = SampleNoise(seed, shape), list(range(first, first + n))
    noise = rule.initial(indices).to(device)
    sync(device)
    start = time.perf_counter()
    chunks = stream_chunks(model, noise, torch.tensor(spec.times, dtype=torch.float64), cond,
                           fresh=chunk_noise(rule, indices, spec.chunk_frames, device),
                           first_times=spec.first_chunk_times)
    for k, chunk in enumerate(chunks):
        sync(device)
        yield k, chunk.cpu(), time.perf_counter() - start


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work before reading the clock (a no-op elsewhere)."""
    if device.type == "cuda":      # CUDA runs asynchronously: wait before reading the clock
        torch.cuda.synchronize(device)
