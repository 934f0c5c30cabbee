"""Adversarial self-distillation (ASD; Yang et al., arXiv:2511.01419): one causal video student for 1, 2 and 4 steps.

Self forcing (methods/self_forcing.py) pulls every step count straight toward the data with DMD, which leaves the
largest gap at 1-2 steps. ASD adds a chain of small gaps (its Fig. 1): the student's n-step rollout is pushed toward
its OWN (n+1)-step rollout from the same noise by a discriminator, while the DMD term keeps the top step count on the
teacher. The paper released no code; this is our reading of it (README, "Adversarial self-distillation: the open
choices", gives the ablation that settled each):

* ``ladder``: the schedules the student serves, fewest steps first, the last being ``student_times`` (the DMD term's
  schedule). Default: evenly spaced subsets of ``student_times`` (ASD's "larger skipping steps" for fewer steps; the
  paper does not give its subsets), e.g. [1.0], [1.0, 0.75], [1.0, 0.9, 0.5], [1.0, 0.9, 0.75, 0.5].
* per iteration one rung i is drawn on rank 0 and broadcast (``shared_randint``); the fake side is the streaming
  rollout (inference/streaming.py, the sampler's own function) on ladder[i], with gradients only through each
  chunk's last step (self forcing's truncation), the real side the rollout on ladder[i + 1] from the same initial
  noise, never with gradients;
* the discriminator is a head (models/heads.py) on the critic's features, on inputs noised at t ~ U[0, 1] as in
  DMD2's GAN; non-saturating losses (methods/losses.py) with the finite-difference R1 + R2 penalty of Self Forcing's
  GAN; it trains with the critic, one forward for the denoising and the discriminator rows (DMD2's GAN path);
* the DMD term is self forcing's (its rollout on the top rung, its random exit step), unchanged.

First-frame enhancement (ASD sec. 3.3) is a sampling option, not training: the first chunk takes a rung with more
steps (``SamplingSpec.first_chunk_times``; ``diffdistill sample --ffe``); the export records the ladder so any rung
samples on the student's distribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from ..data import Batch
from ..inference.spec import SamplingSpec, evenly_spaced_subset
from ..inference.streaming import stream_chunks
from ..models.base import Cond, DiffusionModel
from ..models.heads import attach_head
from ..randomness import shared_randint
from .losses import gan_generator_loss
from .self_forcing import SelfForcing, SelfForcingConfig


@dataclass
class ASDConfig(SelfForcingConfig):
    """Self forcing's settings plus ASD's. Weights follow Self Forcing's GAN (1e-2 for the generator and the
    discriminator, R1 + R2 at 0.5 with sigma 0.01) until the ablation says otherwise."""

    ladder: list[list[float]] = field(default_factory=list)   # schedules served, fewest steps first; [] = subsets
    asd_student_weight: float = 0.01       # lambda_adv on softplus(-D(noised n-step clip))
    asd_critic_weight: float = 0.01        # the discriminator loss's weight in the critic's loss
    fd_reg_weight: float = 0.5             # finite-difference R1 + R2, inside the discriminator loss
    fd_sigma: float = 0.01
    sample_steps: int = 0                  # the export's default steps per chunk (0: the top rung)
    ffe_steps: int = 0                     # the export's default first-chunk steps (first-frame enhancement; 0: off)


class ASD(SelfForcing):
    groups = ("student", "critic")

    def __init__(self, cfg: ASDConfig, teacher: DiffusionModel, num_classes: int = 0,
                 student: DiffusionModel | None = None, critic: DiffusionModel | None = None) -> None:
        if cfg.gan_student_weight or cfg.gan_critic_weight:
            raise ValueError("asd's discriminator compares the student's own rollouts (n vs n + 1 steps); set "
                             "method.gan_student_weight and gan_critic_weight to 0 (they add DMD2's real-data GAN)")
        if cfg.rollout != "self":
            raise ValueError("asd trains on the student's own rollouts; method.rollout must be 'self'")
        if min(cfg.asd_student_weight, cfg.asd_critic_weight, cfg.fd_reg_weight) < 0 or cfg.fd_sigma <= 0:
            raise ValueError("method.asd_student_weight, asd_critic_weight and fd_reg_weight must be >= 0 and "
                             "fd_sigma > 0")
        super().__init__(cfg, teacher, num_classes, student, critic)
        self.ladder = [torch.tensor(r, dtype=torch.float64) for r in resolve_ladder(cfg.ladder, cfg.student_times)]
        served = [len(r) for r in self.ladder]
        for name, steps in (("sample_steps", cfg.sample_steps), ("ffe_steps", cfg.ffe_steps)):
            if steps and steps not in served:
                raise ValueError(f"method.{name}={steps} is not a step count of the ladder {served}")
        attach_head(self.critic)       # before the trainer builds optimizers: the head trains with the critic

    def draw_rung(self, device: torch.device) -> int:
        """The rung i of this iteration (its pair: ladder[i] vs ladder[i + 1]), drawn on rank 0 and shared."""
        return int(shared_randint(0, len(self.ladder) - 1, device=device))

    def rollout(self, noise: Tensor, rung: int, cond: Cond | None, grad: bool) -> Tensor:
        """The student's whole clip on ``ladder[rung]`` from ``noise``: the streaming sampler, every chunk to its last
        step, gradients (when ``grad``) only through that step."""
        times = self.ladder[rung]
        return torch.cat(list(stream_chunks(self.student, noise, times, cond, exit_step=len(times) - 1, grad=grad,
                                            context_t=self.cfg.context_t, truncate=self.cfg.truncate)), dim=1)

    def adversarial_pair(self, batch: Batch, rung: int | None = None) -> tuple[Tensor, Tensor, int]:
        """(fake, real, i) without gradients: the student's clips on ladder[i] and ladder[i + 1] from one noise."""
        i = self.draw_rung(batch.x0.device) if rung is None else rung
        noise = torch.randn_like(batch.x0)
        with torch.no_grad():
            return self.rollout(noise, i, batch.cond, False), self.rollout(noise, i + 1, batch.cond, False), i

    def _student_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        loss, out = super()._student_loss(batch)             # self forcing's DMD term on the top rung
        if self.cfg.asd_student_weight == 0:
            return loss, out
        i = self.draw_rung(batch.x0.device)
        fake = self.rollout(torch.randn_like(batch.x0), i, batch.cond, grad=True)
        adv = gan_generator_loss(self.discriminate(fake, batch.cond))
        out.update({"student/asd": adv.detach(), "student/rung": torch.tensor(float(len(self.ladder[i])))})
        return loss + self.cfg.asd_student_weight * adv, out

    def _critic_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.no_grad():
            x_gen, _ = self.generate(batch, with_grad=False)
        fake, real, i = self.adversarial_pair(batch)
        loss, out = self._critic_loss_with_gan(batch, x_gen, real=real, fake=fake, weight=self.cfg.asd_critic_weight,
                                               fd_weight=self.cfg.fd_reg_weight, fd_sigma=self.cfg.fd_sigma)
        out["critic/rung"] = torch.tensor(float(len(self.ladder[i])))
        return loss, out

    def sampling_spec(self) -> SamplingSpec:
        """Self forcing's spec with the ladder (every rung samples on the student's distribution), the default rung
        and first-frame enhancement."""
        spec = replace(super().sampling_spec(), ladder=tuple(tuple(float(t) for t in r) for r in self.ladder))
        if self.cfg.sample_steps:
            spec = replace(spec, times=spec.rung(self.cfg.sample_steps), timesteps=())
        if self.cfg.ffe_steps:
            spec = replace(spec, first_chunk_times=spec.rung(self.cfg.ffe_steps))
        return spec


def resolve_ladder(ladder: list[list[float]], top: list[float]) -> list[list[float]]:
    """The ladder a config gives, validated, or the default: for each n in 1..N the n times of ``top`` (N steps) at
    indices round(j N / n), j < n (evenly spaced, always starting at the first time)."""
    if not ladder:
        ladder = [list(evenly_spaced_subset(top, n)) for n in range(1, len(top) + 1)]
    if len(ladder) < 2:
        raise ValueError(f"method.ladder needs at least two schedules (a pair to compare), got {ladder}; give "
                         "student_times with >= 2 steps or list the schedules")
    if [float(t) for t in ladder[-1]] != [float(t) for t in top]:
        raise ValueError(f"the ladder's last schedule must be method.student_times {top} (the DMD term's schedule), "
                         f"got {ladder[-1]}")
    for rung in ladder:
        if not rung or any(not 0.0 < t <= 1.0 for t in rung) or any(b >= a for a, b in zip(rung, rung[1:])):
            raise ValueError(f"each ladder schedule must decrease strictly within (0, 1], got {rung}")
    if any(len(b) <= len(a) for a, b in zip(ladder, ladder[1:])):
        raise ValueError(f"ladder schedules must have strictly more steps each, got {[len(r) for r in ladder]}")
    return [[float(t) for t in r] for r in ladder]
