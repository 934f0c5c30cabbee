"""DMD2 (Yin et al. 2024, "Improved Distribution Matching Distillation for Fast Image Synthesis").

Roles: a frozen ``teacher`` (the real score, with CFG), a trainable ``student`` (the few-step generator) and a
trainable ``critic`` (the fake score: a diffusion model of the student's own outputs). Per step:

* student phase (every ``student_every``-th step; two time-scale update rule, DMD2 sec. 4.2): draw the
  backward-simulation index k (shared by all ranks), roll the student k steps without grad from pure noise, run it
  once with grad -> x_gen; noise x_gen at t ~ U[t_min, t_max]; the teacher (CFG) and the critic (no CFG) denoise it
  without grad; the DM surrogate loss (losses.dmd_loss) pushes x_gen toward the teacher and away from the critic.
* critic phase (every step): the critic's denoising loss, in its own parameterisation, on detached x_gen.

Multi-step students run on fixed times (DMD2 4-step SDXL: timesteps 999, 749, 499, 249) and are trained at the
input they meet at inference: pure noise at step 0, their own re-noised predictions after (DMD2 sec. 4.5). A one-step
student may be conditioned on a time other than 1 (DMD2's one-step SDXL feeds pure noise at timestep 399) to avoid
the 1/alpha(1) amplification of an eps-prediction network at t = 1.
Not here (yet): the GAN head (sec. 4.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..data import Batch
from ..models.base import Cond, DiffusionModel, LoraConfig, freeze, guided, role_copy
from ..randomness import shared_randint
from ..sampling import backward_simulate, few_step_sample
from .base import Method
from .losses import denoising_loss, dmd_loss


@dataclass
class DMD2Config:
    """DMD2 settings. Guidance uses the STANDARD CFG form uncond + w (cond - uncond) (w = 1: no guidance)."""

    student_times: list[float] = field(default_factory=lambda: [1.0])   # the student's fixed times, noisy -> clean
    guidance: float = 3.0                  # teacher CFG scale for the real score
    student_every: int = 5                 # one student update per this many critic updates (TTUR)
    t_min: float = 0.02                    # DM noising range (DMD2: timesteps 20..980)
    t_max: float = 0.98
    backward_simulation: bool = True       # False: the ablation that feeds noised real data at step k > 0
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
        self.student = student if student is not None else role_copy(teacher, cfg.student_lora)
        self.critic = critic if critic is not None else role_copy(teacher, cfg.critic_lora)
        self.times = torch.tensor(cfg.student_times, dtype=torch.float64)
        self.real_score = guided(self.teacher, cfg.guidance)

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
        student = self.role("student")       # the no-grad rollout needs no DDP wrapper
        if self.cfg.backward_simulation or k == 0:
            x_k = backward_simulate(student, noise, self.times, k, batch.cond)
        else:   # ablation: the training/inference mismatch DMD2 fixes (noised real data as the step-k input)
            x_k = student.schedule.add_noise(batch.x0, noise, self._t(self.times[k], batch.x0))
        with torch.set_grad_enabled(with_grad):
            return self.student(x_k, self._t(self.times[k], x_k), batch.cond).x0, k

    def _student_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        x_gen, k = self.generate(batch, with_grad=True)
        t = self.teacher.schedule.sample_t(x_gen.shape[0], t_min=self.cfg.t_min, t_max=self.cfg.t_max,
                                           device=x_gen.device)
        x_t = self.teacher.schedule.add_noise(x_gen.detach(), torch.randn_like(x_gen), t)
        with torch.no_grad():
            real_x0 = self.real_score(x_t, t, batch.cond).x0
            fake_x0 = self.critic(x_t, t, batch.cond).x0
        loss, logs = dmd_loss(x_gen, real_x0, fake_x0)
        return loss, {"student/dm": loss.detach(), "student/dm_grad_norm": logs["dm_grad_norm"],
                      "student/k": torch.tensor(float(k))}

    def _critic_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.no_grad():
            x_gen, _ = self.generate(batch, with_grad=False)
        schedule = self.role("critic").schedule
        t = schedule.sample_t(x_gen.shape[0], device=x_gen.device)
        loss = denoising_loss(self.critic, schedule, x_gen, t, batch.cond)
        return loss, {"critic/denoise": loss.detach()}

    @staticmethod
    def _t(t: Tensor, like: Tensor) -> Tensor:
        return t.to(device=like.device, dtype=torch.float64).expand(like.shape[0])

    @torch.no_grad()
    def preview(self, n: int, seed: int = 0) -> Tensor:
        student = self.export_model()
        gen = torch.Generator().manual_seed(seed)
        device = next(student.parameters()).device
        noise = torch.randn(n, *student.data_shape, generator=gen).to(device)
        cond = Cond(labels=(torch.arange(n) % self.num_classes).to(device)) if self.num_classes else None
        return few_step_sample(student, noise, self.times, cond)

    def export_model(self) -> DiffusionModel:
        return self.role("student")

    def sampling_info(self) -> dict:
        return {"sampler": "few_step", "steps": len(self.cfg.student_times), "times": list(self.cfg.student_times),
                "guidance": 1.0, "num_classes": self.num_classes}


def _validate(cfg: DMD2Config) -> None:
    times = cfg.student_times
    if not times or any(not 0.0 < t <= 1.0 for t in times) or any(b >= a for a, b in zip(times, times[1:])):
        raise ValueError(f"method.student_times must be strictly decreasing values in (0, 1], got {times}")
    if cfg.student_every < 1:
        raise ValueError(f"method.student_every must be >= 1, got {cfg.student_every}")
    if not 0.0 <= cfg.t_min < cfg.t_max <= 1.0:
        raise ValueError(f"method.t_min/t_max must satisfy 0 <= t_min < t_max <= 1, got {cfg.t_min}, {cfg.t_max}")
