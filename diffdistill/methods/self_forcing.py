"""Self Forcing (Huang et al., arXiv:2506.08009): a block-causal few-step video student trained on its OWN
autoregressive rollouts with the DMD loss, so training sees exactly what streaming inference produces.

This is DMD2 (methods/dmd2.py: the same roles, losses, two time-scale updates and critic) with one thing swapped:
the student's sample comes from the streaming rollout of inference/streaming.py (the very function `diffdistill
sample` streams with), not from a one-shot few-step sampler:

* the student is a block-causal copy of the bidirectional teacher (models/causal.py; chunks of ``chunk_frames``
  latent frames, KV cache), or a causal network the recipe gives (e.g. an ODE-regressed initialisation);
* per step one exit index e ~ U{0..S-1} is drawn on rank 0 and broadcast (``shared_randint``), shared by every chunk
  (Self Forcing's ``same_step_across_blocks``); each chunk runs steps 0..e-1 without gradients and step e with them
  (gradient truncation, sec. 3.3); its clean output is re-run at t = ``context_t`` into the cache, detached;
* the DMD loss (losses.dmd_loss via DMD2) compares the whole generated clip under the bidirectional teacher (CFG,
  standard form) and the bidirectional critic, at one noise level per clip (Self Forcing sec. 3.2, "video-level
  distribution matching").

Ablations (Self Forcing Table 3): ``rollout: teacher_forcing`` writes the real clip into the cache as context (the
train/test gap of CausVid-style training); ``truncate: false`` keeps gradients through every denoising step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..data import Batch
from ..inference.spec import SamplingSpec
from ..inference.streaming import causal_sample, stream_chunks
from ..models.base import DiffusionModel
from ..randomness import shared_randint
from .dmd2 import DMD2, DMD2Config


@dataclass
class SelfForcingConfig(DMD2Config):
    """DMD2's settings plus the causal rollout's. ``student_times`` are every chunk's few-step times."""

    chunk_frames: int = 1                  # latent frames per chunk (Self Forcing on Wan: 3)
    window_chunks: int = 0                 # rolling attention window in chunks (0: all earlier chunks)
    context_t: float = 0.0                 # the noise level the finished chunk is cached at (Self Forcing: 0)
    rollout: Literal["self", "teacher_forcing"] = "self"
    truncate: bool = True                  # gradients only through each chunk's exit step


class SelfForcing(DMD2):
    groups = ("student", "critic")

    def __init__(self, cfg: SelfForcingConfig, teacher: DiffusionModel, num_classes: int = 0,
                 student: DiffusionModel | None = None, critic: DiffusionModel | None = None) -> None:
        if not hasattr(teacher, "make_causal"):
            raise ValueError(f"self_forcing distils a video transformer (model.kind: wan); got a "
                             f"{type(teacher).__name__} teacher")
        if not 0.0 <= cfg.context_t < 1.0:
            raise ValueError(f"method.context_t must lie in [0, 1), got {cfg.context_t}")
        super().__init__(cfg, teacher, num_classes, student, critic)
        if getattr(self.student, "causal", None) is None:
            self.student.make_causal(cfg.chunk_frames, cfg.window_chunks)
        elif self.student.causal.chunk_frames != cfg.chunk_frames:
            raise ValueError(f"the given student streams chunks of {self.student.causal.chunk_frames} frames but "
                             f"method.chunk_frames={cfg.chunk_frames}")

    def generate(self, batch: Batch, with_grad: bool) -> tuple[Tensor, int]:
        """The student's clip from its own streaming rollout, every chunk stopping at one shared exit step."""
        e = int(shared_randint(0, len(self.times), device=batch.x0.device)) if len(self.times) > 1 else 0
        context = batch.x0 if self.cfg.rollout == "teacher_forcing" else None
        chunks = stream_chunks(self.student, torch.randn_like(batch.x0), self.times, batch.cond, exit_step=e,
                               grad=with_grad, context_t=self.cfg.context_t, context=context,
                               truncate=self.cfg.truncate)
        return torch.cat(list(chunks), dim=1), e

    @torch.no_grad()
    def preview(self, n: int, seed: int = 0, *, batch: Batch | None = None) -> Tensor:
        student, noise, cond, _ = self.preview_inputs(n, seed, batch)
        return causal_sample(student, noise, self.times, cond)

    def sampling_spec(self) -> SamplingSpec:
        """Each chunk on the student's own times, guidance 1 (distilled in), chunk by chunk."""
        spec = super().sampling_spec()
        return SamplingSpec(spec.sampler, spec.times, 1.0, spec.num_classes, timesteps=spec.timesteps,
                            chunk_frames=self.cfg.chunk_frames)
