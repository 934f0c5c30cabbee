"""Phased DMD (Fan et al., arXiv:2510.27684): few-step distribution matching split into SNR phases, one expert per
phase, each phase matched on its own intermediate distribution p(x_{t_k}) instead of the clean data.

The student's times t_0 = 1 > t_1 > ... > t_{N-1} (after the flow time shift) are grouped into K phases of N / K
consecutive steps. Phase k's expert maps x at the phase's first time to x_{t_k}, the sample at the NEXT phase's first
time (0 for the last phase), stepping with Euler / DDIM like the teacher's ODE (sec. 3, "backward simulation" with
an Euler solver). Training runs the phases in order, ``phase_steps`` trainer steps each (the last phase until
``trainer.max_steps``); the phase is a function of the step, so a run killed mid-phase resumes in that phase.

One iteration of phase k (sec. 3.2-3.3; alg. 1):

* backward simulation: the frozen earlier experts (no grad) from pure noise to the phase start, then the phase's
  own steps up to a random exit step j inside the phase (drawn once, shared by all ranks: stochastic gradient
  truncation INSIDE a phase), then one step of expert k WITH grad, straight to the phase end t_k -> x_{t_k};
* re-noising FROM t_k, not from 0: t in the reverse-nested interval (t_k, 1) (uniform before the time shift; the
  disjoint interval (t_k, t_{k-1}) gives low contrast, sec. 4.4), x_t = alpha_{t|t_k} x_{t_k} + sigma_{t|t_k} eps
  (schedule.transition);
* generator (every ``student_every``-th step, two time-scale rule): DMD2's loss (losses.dmd_loss) on x_{t_k} with the
  teacher (CFG) and this phase's fake score, times the chain-rule factor dx_t / dx_{t_k} relative to DMD's
  (1 / alpha_{t_k}; eq. 10's w_{t|t_k} = w_t / alpha_{t_k}, so it is DMD2 at t_k = 0);
* fake score (every step): the sub-interval score-matching loss in its stable form (eq. 13;
  losses.subinterval_denoising_loss) on detached x_{t_k}. One fake per phase, a fresh copy of the teacher when its
  phase starts (the critic role holds all K; only phase k's gets gradients, so its optimizer state starts fresh).

Roles: ``student`` and ``critic`` are models/experts.py ``Experts`` of K copies (of the teacher, or of the recipe's
``student:`` / ``critic:`` network; LoRA copies with ``student_lora``: the MoE student). A teacher that is itself
an ``Experts`` (Wan2.2-A14B's high- and low-noise transformers) gives each phase's student expert a copy of the
teacher expert that covers the phase, and each fake a copy of the whole teacher (routed by the re-noising time, as
in the paper's Wan2.2 phase 2, App. B). The export is the K experts with their boundaries, sampled with Euler on the
student's times.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from ..data import Batch
from ..inference.sampling import backward_simulate, ode_sample
from ..inference.spec import SamplingSpec
from ..models.base import DiffusionModel, guided, role_copy
from ..models.experts import Experts
from ..randomness import shared_randint
from ..schedule import unshift_t
from .dmd2 import DMD2, DMD2Config
from .losses import dmd_loss, subinterval_denoising_loss


@dataclass
class PhasedDMDConfig(DMD2Config):
    """DMD2's settings plus the phases'. ``student_times``: the whole few-step schedule, noisy -> clean."""

    phases: int = 0                          # K; 0 = one phase per student step
    phase_steps: int = 0                     # trainer steps of every phase but the last (needed when K > 1)
    boundaries: list[float] = field(default_factory=list)   # expert switch times (K - 1); [] = midway between phases
    renoise_floor: list[float] = field(default_factory=list)  # per phase: re-noise only above this t (Wan2.2 T2V:
                                                              # [0.875, 0.0], its MoE boundary, App. B)
    shifted: bool = True                     # re-noising t uniform before the schedule's time shift (flow models)
    fake_max_weight: float = 10.0            # clamp of 1 / sigma_{t|s}^2 in the fake's stable loss (eq. 13)


class PhasedDMD(DMD2):
    groups = ("student", "critic")
    partial_updates: ClassVar[bool] = True    # only the current phase's expert and fake get gradients

    def __init__(self, cfg: PhasedDMDConfig, teacher: DiffusionModel, num_classes: int = 0,
                 student: DiffusionModel | None = None, critic: DiffusionModel | None = None) -> None:
        self._plan = PhasePlan(cfg)
        if cfg.gan_student_weight or cfg.gan_critic_weight:
            raise ValueError("phased_dmd is data-free (no GAN term, arXiv:2510.27684 sec. 3); set "
                             "method.gan_student_weight and method.gan_critic_weight to 0")
        super().__init__(cfg, teacher, num_classes, student, critic)
        self.phase = 0

    def make_roles(self, teacher: DiffusionModel, student: DiffusionModel | None,
                   critic: DiffusionModel | None) -> tuple[DiffusionModel, DiffusionModel]:
        plan = self._plan
        if isinstance(teacher, Experts) and student is None:    # each phase from the teacher expert that covers it
            experts = [role_copy(teacher.experts[self._teacher_expert(teacher, k)], self.cfg.student_lora)
                       for k in range(plan.count)]
        else:
            base = super().make_roles(teacher, student, critic)[0]
            experts = [base] + [copy.deepcopy(base) for _ in range(plan.count - 1)]
        fake = critic if critic is not None else role_copy(teacher, self.cfg.critic_lora)
        fakes = Experts([fake] + [copy.deepcopy(fake) for _ in range(plan.count - 1)], plan.boundaries)
        return Experts(experts, plan.boundaries), fakes

    def _teacher_expert(self, teacher: Experts, phase: int) -> int:
        """The teacher expert whose band holds all of ``phase``'s times (its student expert starts as its copy)."""
        first, last = self._plan.step_range(phase)
        owners = teacher.expert_index(self.times[first:last]).unique().tolist()
        if len(owners) != 1:
            raise ValueError(f"phase {phase}'s times {[round(float(t), 4) for t in self.times[first:last]]} straddle "
                             f"the teacher's expert switch at {teacher.boundaries}: align the phases with it (e.g. "
                             f"method.boundaries: {teacher.boundaries} and phases whose steps fall on one side each)")
        return int(owners[0])

    # ------------------------------------------------------------------ phases
    def phase_of(self, step: int) -> int:
        return self._plan.phase_of(step)

    def loss(self, phase: str, batch: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        self.phase = self.phase_of(step)
        self.role("critic").only = self.phase          # the fake score of this phase, at every noise level
        return super().loss(phase, batch, step)

    def generate(self, batch: Batch, with_grad: bool) -> tuple[Tensor, int]:
        """x_{t_k} of the current phase from the student's own rollout, through one exit step with grad."""
        first, last = self._plan.step_range(self.phase)
        j = first + (int(shared_randint(0, last - first, device=batch.x0.device)) if last - first > 1 else 0)
        x_j = backward_simulate(self.student, torch.randn_like(batch.x0), self.times, j, batch.cond, euler=True)
        with torch.set_grad_enabled(with_grad):
            pred = self.student(x_j, self._t(self.times[j], x_j), batch.cond)
            end = self._plan.end_times[self.phase]
            if end == 0.0:
                return pred.x0, j
            return self.student.schedule.ddim_step(x_j, pred.x0, pred.eps, self._t(torch.tensor(end), x_j)), j

    def _renoise_t(self, n: int, t_max: float, device: torch.device) -> tuple[Tensor, Tensor]:
        """(t, s): re-noising times in the reverse-nested interval (s, t_max] of the current phase (s = its end)."""
        schedule, end = self.teacher.schedule, self._plan.end_times[self.phase]
        low = max(end, self.cfg.t_min, self._plan.floor(self.phase))
        shifted = self.cfg.shifted and schedule.kind == "flow"
        low, high = (float(unshift_t(v, schedule.shift)) if shifted else v for v in (low, t_max))
        t = schedule.sample_t(n, t_min=low, t_max=high, shifted=shifted, device=device).double()
        t = t.clamp(min=end, max=1.0)          # float32 draws may round just below the phase end
        return t, torch.full_like(t, end)

    def _student_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        x_s, j = self.generate(batch, with_grad=True)
        t, s = self._renoise_t(x_s.shape[0], self.cfg.t_max, x_s.device)
        x_t = self.teacher.schedule.add_noise_from(x_s.detach(), torch.randn_like(x_s), t, s)
        with torch.no_grad():
            real_x0 = guided(self.teacher, self.cfg.guidance, batch.uncond)(x_t, t, batch.cond).x0
            fake_x0 = self.critic(x_t, t, batch.cond).x0
        alpha_s = self.teacher.schedule.alpha_sigma(s)[0]
        loss, logs = dmd_loss(x_s, real_x0, fake_x0, weight=1.0 / alpha_s)
        return loss, {"student/dm": loss.detach(), "student/dm_grad_norm": logs["dm_grad_norm"],
                      "student/k": torch.tensor(float(j)), "student/phase": torch.tensor(float(self.phase))}

    def _critic_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.no_grad():
            x_s, _ = self.generate(batch, with_grad=False)
        t, s = self._renoise_t(x_s.shape[0], 1.0, x_s.device)
        loss = subinterval_denoising_loss(self.critic, self.critic.schedule, x_s, s, t, batch.cond,
                                          self.cfg.fake_max_weight)
        return loss, {"critic/denoise": loss.detach()}

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def preview(self, n: int, seed: int = 0, *, batch: Batch | None = None) -> Tensor:
        student, noise, cond, _ = self.preview_inputs(n, seed, batch)
        return ode_sample(student, noise, self.times, cond)

    def sampling_spec(self) -> SamplingSpec:
        """Euler on the student's own times (``fixed``: other step counts are off its training), guidance 1."""
        spec = super().sampling_spec()
        return SamplingSpec("ode", spec.times, 1.0, spec.num_classes, timesteps=spec.timesteps, fixed=True)


class PhasePlan:
    """Which student steps, times and trainer steps belong to each phase (pure bookkeeping, from the config)."""

    def __init__(self, cfg: PhasedDMDConfig) -> None:
        times = [float(t) for t in cfg.student_times]
        count = cfg.phases or len(times)
        if count < 1 or len(times) % count:
            raise ValueError(f"method.phases={cfg.phases} must divide the {len(times)} student steps "
                             f"(student_times={times}); e.g. phases: {len(times)} (one per step) or 1")
        if count > 1 and cfg.phase_steps < 1:
            raise ValueError(f"method.phase_steps (trainer steps per phase) must be >= 1 with {count} phases; the "
                             "last phase runs until trainer.max_steps, so set max_steps > (phases - 1) * phase_steps")
        self.count, self.per_phase, self.phase_steps = count, len(times) // count, cfg.phase_steps
        self.start_times = [times[k * self.per_phase] for k in range(count)]
        self.end_times = self.start_times[1:] + [0.0]
        bounds = cfg.boundaries or [(times[k * self.per_phase - 1] + times[k * self.per_phase]) / 2
                                    for k in range(1, count)]
        if len(bounds) != count - 1 or any(
                not times[k * self.per_phase - 1] >= b > times[k * self.per_phase] for k, b in enumerate(bounds, 1)):
            raise ValueError(f"method.boundaries={list(bounds)} must hold {count - 1} switch times, the k-th in "
                             f"(first time of phase k, last time of phase k-1] for student_times={times}")
        self.boundaries = [float(b) for b in bounds]
        floors = cfg.renoise_floor or [0.0] * count
        if len(floors) != count or any(not 0.0 <= f < cfg.t_max for f in floors):
            raise ValueError(f"method.renoise_floor needs one value per phase ({count}) in [0, t_max), got {floors}")
        self._floors = [float(f) for f in floors]
        for k, end in enumerate(self.end_times):
            if max(end, cfg.t_min, self._floors[k]) >= cfg.t_max:
                raise ValueError(f"phase {k} ends at t = {end:.4g}: its re-noising interval (t_k, t_max = "
                                 f"{cfg.t_max}) is empty; raise method.t_max or use fewer phases")

    def phase_of(self, step: int) -> int:
        return min(step // self.phase_steps, self.count - 1) if self.count > 1 else 0

    def step_range(self, phase: int) -> tuple[int, int]:
        """Student step indices [first, last) of ``phase``."""
        return phase * self.per_phase, (phase + 1) * self.per_phase

    def floor(self, phase: int) -> float:
        return self._floors[phase]
