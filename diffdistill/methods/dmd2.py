"""DMD2 (Yin et al. 2024, "Improved Distribution Matching Distillation for Fast Image Synthesis").

Roles: a frozen ``teacher`` (the real score, with CFG), a trainable ``student`` (the few-step generator) and a
trainable ``critic`` (the fake score: a diffusion model of the student's own outputs). Per step:

* student phase (every ``student_every``-th step; two time-scale update rule, DMD2 sec. 4.2): draw the
  backward-simulation index k (shared by all ranks), roll the student k steps without grad from pure noise, run it
  once with grad -> x_gen; noise x_gen at t ~ U[t_min, t_max]; the teacher (CFG) and the critic (no CFG) denoise it
  without grad; the DM surrogate loss (losses.dmd_loss) pushes x_gen toward the teacher and away from the critic.
* critic phase (every step): the critic's denoising loss, in its own parameterisation, on detached x_gen.
* GAN (sec. 4.3, optional): a head on the critic's features classifies noised real data against noised x_gen
  (non-saturating softplus losses); the student also gets the generator term through the critic.

Multi-step students run on fixed times (DMD2 4-step SDXL: timesteps 999, 749, 499, 249) and are trained at the
input they meet at inference: pure noise at step 0, their own re-noised predictions after (DMD2 sec. 4.5). A one-step
student may be conditioned on a time other than 1 (DMD2's one-step SDXL feeds pure noise at timestep 399) to avoid
the 1/alpha(1) amplification of an eps-prediction network at t = 1.

A multi-step student must start from the teacher (DMD2 initialises student and critic from it): the critic fits the
mixture of all steps' outputs, so the matching gradient (of KL(mixture || data)) is as small when the steps split
the data's modes between them as when each step covers all of them; from random weights the split is what forms
(measured on the toy mixture: README, "Multi-step DMD2 on the toy mixture").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..data import Batch
from ..models.base import Cond, DiffusionModel, LoraConfig, freeze, guided, role_copy
from ..models.heads import attach_head, generator_logits
from ..randomness import shared_randint
from ..inference.sampling import backward_simulate, few_step_sample
from ..inference.spec import SamplingSpec
from .base import Method
from .losses import denoising_loss, dmd_loss, finite_difference_penalty, gan_discriminator_loss, gan_generator_loss


@dataclass
class DMD2Config:
    """DMD2 settings. Guidance uses the STANDARD CFG form uncond + w (cond - uncond) (w = 1: no guidance)."""

    student_times: list[float] = field(default_factory=lambda: [1.0])   # the student's fixed times, noisy -> clean
    guidance: float = 3.0                  # teacher CFG scale for the real score
    student_every: int = 5                 # one student update per this many critic updates (TTUR)
    t_min: float = 0.02                    # DM noising range (DMD2: timesteps 20..980)
    t_max: float = 0.98
    backward_simulation: bool = True       # False: the ablation that feeds noised real data at step k > 0
    gan_student_weight: float = 0.0        # generator GAN term (DMD2 SDXL 5e-3, ImageNet 3e-3, SD1.5 1e-3)
    gan_critic_weight: float = 0.0         # discriminator loss weight (DMD2 SDXL 1e-2)
    student_lora: LoraConfig = field(default_factory=LoraConfig)         # rank 0 = full student
    critic_lora: LoraConfig = field(default_factory=LoraConfig)


class DMD2(Method):
    groups = ("student", "critic")

    def __init__(self, cfg: DMD2Config, teacher: DiffusionModel, num_classes: int = 0,
                 student: DiffusionModel | None = None, critic: DiffusionModel | None = None) -> None:
        super().__init__()
        _validate(cfg)
        self.cfg, self.num_classes = cfg, num_classes
        self.teacher = freeze(teacher)
        self.times = torch.tensor(cfg.student_times, dtype=torch.float64)
        self.student, self.critic = self.make_roles(teacher, student, critic)
        self.gan = cfg.gan_student_weight > 0 or cfg.gan_critic_weight > 0
        if self.gan:        # before the trainer builds optimizers: the head trains with the critic's group
            attach_head(self.critic)

    def make_roles(self, teacher: DiffusionModel, student: DiffusionModel | None,
                   critic: DiffusionModel | None) -> tuple[DiffusionModel, DiffusionModel]:
        """(student, critic): the recipe's networks, else copies of the teacher (full or LoRA); DMD2 initialises
        both from the teacher. Subclasses shape the roles here (Phased DMD: one copy per phase)."""
        pretrained = getattr(getattr(student, "cfg", None), "pretrained", None)
        if student is not None and len(self.cfg.student_times) > 1 and not pretrained:
            warnings.warn("a multi-step DMD2 student with a network of its own (a `student:` section) must start from "
                          "trained weights: from random weights its steps split the modes between them (the critic "
                          "fits the mixture of all steps' outputs). Drop the `student:` section to copy the teacher, "
                          "or give it `pretrained:`. See recipes/dmd2/toy_gmm2d_4step.yaml.", stacklevel=3)
        return (student if student is not None else role_copy(teacher, self.cfg.student_lora),
                critic if critic is not None else role_copy(teacher, self.cfg.critic_lora))

    @classmethod
    def build(cls, cfg: DMD2Config, models: dict[str, DiffusionModel | None], num_classes: int) -> "DMD2":
        return cls(cfg, models["model"], num_classes, models.get("student"), models.get("critic"))

    def phases(self, step: int) -> tuple[str, ...]:
        return ("student", "critic") if step % self.cfg.student_every == 0 else ("critic",)

    def loss(self, phase: str, batch: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        if phase == "student":
            return self._student_loss(batch)
        return self._critic_loss(batch)

    def generate(self, batch: Batch, with_grad: bool) -> tuple[Tensor, int]:
        """The student's x0 at a random step k of its schedule, from its own rollout (backward simulation)."""
        k = int(shared_randint(0, len(self.times), device=batch.x0.device)) if len(self.times) > 1 else 0
        noise = torch.randn_like(batch.x0)
        if self.cfg.backward_simulation or k == 0:
            x_k = backward_simulate(self.student, noise, self.times, k, batch.cond)
        else:   # ablation: the training/inference mismatch DMD2 fixes (noised real data as the step-k input)
            x_k = self.student.schedule.add_noise(batch.x0, noise, self._t(self.times[k], batch.x0))
        with torch.set_grad_enabled(with_grad):
            return self.student(x_k, self._t(self.times[k], x_k), batch.cond).x0, k

    def _student_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        x_gen, k = self.generate(batch, with_grad=True)
        t = self.teacher.schedule.sample_t(x_gen.shape[0], t_min=self.cfg.t_min, t_max=self.cfg.t_max,
                                           device=x_gen.device)
        x_t = self.teacher.schedule.add_noise(x_gen.detach(), torch.randn_like(x_gen), t)
        with torch.no_grad():   # teacher CFG; text teachers take the data's empty-prompt condition (batch.uncond)
            real_x0 = guided(self.teacher, self.cfg.guidance, batch.uncond)(x_t, t, batch.cond).x0
            fake_x0 = self.critic(x_t, t, batch.cond).x0
        loss, logs = dmd_loss(x_gen, real_x0, fake_x0)
        out = {"student/dm": loss.detach(), "student/dm_grad_norm": logs["dm_grad_norm"], "student/k": torch.tensor(float(k))}
        if self.cfg.gan_student_weight > 0:     # gradient reaches x_gen through the critic (its own grads are dropped)
            gan = gan_generator_loss(self.discriminate(x_gen, batch.cond))
            loss = loss + self.cfg.gan_student_weight * gan
            out["student/gan"] = gan.detach()
        return loss, out

    def _critic_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.no_grad():
            x_gen, _ = self.generate(batch, with_grad=False)
        if not self.gan:
            schedule = self.critic.schedule
            t = schedule.sample_t(x_gen.shape[0], device=x_gen.device)
            loss = denoising_loss(self.critic, schedule, x_gen, t, batch.cond)
            return loss, {"critic/denoise": loss.detach()}
        return self._critic_loss_with_gan(batch, x_gen)

    def _critic_loss_with_gan(self, batch: Batch, x_gen: Tensor, real: Tensor | None = None,
                              fake: Tensor | None = None, weight: float | None = None, fd_weight: float = 0.0,
                              fd_sigma: float = 0.01) -> tuple[Tensor, dict[str, Tensor]]:
        """Denoising on x_gen and the discriminator loss (``real``, default the data, against ``fake``, default
        x_gen; each noised at random t) in ONE critic forward: DDP cannot take several forwards of a module before
        one backward. ``fd_weight`` adds the finite-difference R1 + R2 penalty (Self Forcing's GAN, arXiv:2506.08009,
        sec. 3.4): the logits' change under a ``fd_sigma`` perturbation of each side's input, scaled like the
        discriminator loss (``weight``, default gan_critic_weight)."""
        schedule, n = self.critic.schedule, x_gen.shape[0]
        real, fake = (batch.x0 if real is None else real), (x_gen if fake is None else fake)
        weight = self.cfg.gan_critic_weight if weight is None else weight
        t = schedule.sample_t(n, device=x_gen.device)
        eps = torch.randn_like(x_gen)
        (real_t, t_real), (fake_t, t_fake) = self._noised(real), self._noised(fake)
        inputs, times = [schedule.add_noise(x_gen, eps, t), real_t, fake_t], [t, t_real, t_fake]
        if fd_weight > 0:
            inputs += [real_t + fd_sigma * torch.randn_like(real_t), fake_t + fd_sigma * torch.randn_like(fake_t)]
            times += [t_real, t_fake]
        cond = batch.cond
        for _ in inputs[1:]:
            cond = cond.cat(batch.cond)
        pred = self.critic(torch.cat(inputs), torch.cat(times), cond)
        target = schedule.target(pred.kind, x_gen, eps, t)
        denoise = torch.nn.functional.mse_loss(pred.native[:n].float(), target.float())
        logits = pred.logits[n:].split(n)
        disc = gan_discriminator_loss(logits[0], logits[1])
        out = {"critic/denoise": denoise.detach(), "critic/gan": disc.detach()}
        if fd_weight > 0:
            reg = finite_difference_penalty(logits[0], logits[2]) + finite_difference_penalty(logits[1], logits[3])
            disc = disc + fd_weight * reg
            out["critic/fd_reg"] = reg.detach()
        return denoise + weight * disc, out

    def discriminate(self, x0: Tensor, cond: Cond | None) -> Tensor:
        """The discriminator's logits [B] on ``x0`` noised at random t, for a generator loss (gradient to ``x0``
        only; models/heads.generator_logits)."""
        return generator_logits(self.role("critic"), *self._noised(x0), cond)

    def _noised(self, x0: Tensor) -> tuple[Tensor, Tensor]:
        """Diffusion-GAN input (DMD2 sec. 4.3): x0 noised at t ~ U[0, 1]."""
        schedule = self.critic.schedule
        t = schedule.sample_t(x0.shape[0], device=x0.device)
        return schedule.add_noise(x0, torch.randn_like(x0), t), t

    @staticmethod
    def _t(t: Tensor, like: Tensor) -> Tensor:
        return t.to(device=like.device, dtype=torch.float64).expand(like.shape[0])

    @torch.no_grad()
    def preview(self, n: int, seed: int = 0, *, batch: Batch | None = None) -> Tensor:
        student, noise, cond, _ = self.preview_inputs(n, seed, batch)
        return few_step_sample(student, noise, self.times, cond)

    def export_model(self) -> DiffusionModel:
        return self.role("student")

    def sampling_spec(self) -> SamplingSpec:
        """The student's own fixed times at guidance 1 (the teacher's CFG is distilled into it)."""
        timesteps = tuple(round(float(m)) for m in self.teacher.schedule.model_time(self.times))
        return SamplingSpec("few_step", tuple(self.cfg.student_times), 1.0, self.num_classes, timesteps=timesteps)


def _validate(cfg: DMD2Config) -> None:
    times = cfg.student_times
    if not times or any(not 0.0 < t <= 1.0 for t in times) or any(b >= a for a, b in zip(times, times[1:])):
        raise ValueError(f"method.student_times must be strictly decreasing values in (0, 1], got {times}")
    if cfg.student_every < 1:
        raise ValueError(f"method.student_every must be >= 1, got {cfg.student_every}")
    if cfg.gan_student_weight < 0 or cfg.gan_critic_weight < 0:
        raise ValueError("method.gan_student_weight and method.gan_critic_weight must be >= 0")
    if not 0.0 <= cfg.t_min < cfg.t_max <= 1.0:
        raise ValueError(f"method.t_min/t_max must satisfy 0 <= t_min < t_max <= 1, got {cfg.t_min}, {cfg.t_max}")
