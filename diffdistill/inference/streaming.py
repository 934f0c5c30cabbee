"""Causal video generation chunk by chunk: the one rollout of a block-causal student (models/causal.py), used by
inference (``diffdistill sample``, the demo's stream, the benchmarks) and by self-forcing training alike, so the clips a
student is trained on are produced exactly as users will produce them (Self Forcing, Huang et al., arXiv:2506.08009,
sec. 3.2; its trap: training on ground-truth context while inference feeds the model its own output).

For each chunk of ``chunk_frames`` latent frames: start from that chunk's noise, take the few-step sampler's steps
(predict x0, re-noise with fresh noise to the next time) against the KV cache of the chunks before it, stop at
``exit_step`` (the last step at inference; a random one in training, the only step that keeps gradients), then run
the finished chunk once more at t = ``context_t`` (0: clean) to write its keys/values into the cache. First-frame
enhancement (ASD, arXiv:2511.01419 sec. 3.3) gives the first chunk a schedule of its own with more steps
(``first_times``): its x0 predictions change most from step to step, later chunks' barely do. The cache is
always detached, so no gradient flows into earlier chunks through attention (gradient truncation, Self Forcing
sec. 3.3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from ..models.base import Cond, DiffusionModel
from .sampling import _t_batch, _times, renoise

ChunkNoise = Callable[[int, int], Tensor]      # (chunk index, step index) -> the fresh noise re-noising that step


def chunk_frames_of(model: DiffusionModel) -> int:
    """The chunk size of a causal model; a clear error for anything else."""
    causal = getattr(model, "causal", None)
    if causal is None:
        raise ValueError(f"{type(model).__name__} is not block-causal (model.chunk_frames = 0 or not a Wan model): "
                         "stream a causal student (chunk_frames > 0), or sample bidirectional models with the "
                         "ode / few_step samplers")
    return causal.chunk_frames


def stream_chunks(model: DiffusionModel, noise: Tensor, times: Sequence[float] | Tensor, cond: Cond | None = None, *,
                  fresh: ChunkNoise | None = None, exit_step: int | None = None, grad: bool = False,
                  context_t: float = 0.0, context: Tensor | None = None, truncate: bool = True,
                  first_times: Sequence[float] | Tensor | None = None) -> Iterator[Tensor]:
    """Yield each chunk's x0 [B, chunk_frames, C, H, W], in order, for ``noise`` [B, T, C, H, W] (T a multiple of the
    chunk size; T may exceed the trained length when the model has a rolling window).

    ``exit_step`` (default: the last of ``times``) is where every chunk stops; only that forward keeps gradients, and
    only when ``grad`` (``truncate=False``, an ablation: the steps before it keep gradients too). ``fresh(k, j)``
    gives the noise that re-noises chunk k after step j (None: the global RNG, as training draws). ``context``
    [B, T, C, H, W] (an ablation: teacher forcing, CausVid-style) writes those frames into the cache instead of the
    student's own outputs. ``first_times`` (first-frame enhancement, inference only): the first chunk's schedule;
    later chunks take ``times``. Guidance is not applied here: a causal student samples as distilled (CFG baked in), and a KV
    cache holds one batch.
    """
    chunk = chunk_frames_of(model)
    ts = _times(times)
    exit_at = len(ts) - 1 if exit_step is None else int(exit_step)
    if not 0 <= exit_at < len(ts):
        raise ValueError(f"exit_step={exit_at} is outside 0..{len(ts) - 1} for {len(ts)} steps")
    if first_times is not None and len(first_times) and exit_step is not None:
        raise ValueError("first_times (first-frame enhancement) is an inference schedule; training rollouts stop at "
                         "exit_step on one schedule for every chunk")
    lead = _times(first_times) if first_times is not None and len(first_times) else ts
    if noise.dim() != 5 or noise.shape[1] % chunk:
        raise ValueError(f"noise must be [B, T, C, H, W] with T a multiple of chunk_frames={chunk}, got "
                         f"{list(noise.shape)}")
    cache = model.new_cache()
    chunks = noise.shape[1] // chunk
    for k in range(chunks):
        x = noise[:, k * chunk:(k + 1) * chunk]
        steps, last = (lead, len(lead) - 1) if k == 0 else (ts, exit_at)
        with model.streaming(cache):
            with torch.set_grad_enabled(grad and not truncate):
                for j in range(last):
                    x0 = model(x, _t_batch(steps[j], x), cond).x0
                    x = renoise(model, x0, steps[j + 1], eps=fresh(k, j) if fresh is not None else None)
            with torch.set_grad_enabled(grad):
                x0 = model(x, _t_batch(steps[last], x), cond).x0
        if k + 1 < chunks:              # the last chunk has no successor to attend to it
            with torch.no_grad(), model.streaming(cache, write=True):
                clean = (x0 if context is None else context[:, k * chunk:(k + 1) * chunk]).detach()
                if context_t > 0:
                    clean = renoise(model, clean, torch.tensor(context_t, dtype=torch.float64))
                model(clean, _t_batch(torch.tensor(context_t, dtype=torch.float64), clean), cond)
        yield x0


def causal_sample(model: DiffusionModel, noise: Tensor, times: Sequence[float] | Tensor, cond: Cond | None = None,
                  fresh: ChunkNoise | None = None, first_times: Sequence[float] | Tensor | None = None) -> Tensor:
    """The whole clip of :func:`stream_chunks` at inference: [B, T, C, H, W]."""
    return torch.cat(list(stream_chunks(model, noise, times, cond, fresh=fresh, first_times=first_times)), dim=1)
