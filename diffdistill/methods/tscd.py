"""Trajectory-segmented consistency distillation (TSCD; Hyper-SD, Ren et al., arXiv:2404.13686 sec. 3.1, alg. 1).

The time axis is cut into k equal segments; inside each, the student learns the consistency map to the segment's
lower boundary (k = 1: to t = 0, i.e. CTM / consistency training on the whole trajectory). Stages run with falling
k (default 8, 4, 2, 1), each from the previous stage's weights: the stage is a function of the trainer step
(``stage_steps``), so a killed run resumes in its stage; chained recipes with ``trainer.init_from`` work as well.

One iteration (N = ``teacher_steps``; times drawn uniformly in u and mapped by schedule.warp, i.e. flow shift):

* the start u_n uniform in (0, 1], its segment's lower boundary u_b = floor-to-a-multiple-of-1/k, the teacher's step
  to u_{n-1} = max(u_n - 1/N, u_b), and the end uniform in [u_b, u_{n-1}] (:func:`segment_draw`: the jump never
  leaves the segment);
* x_{t_n} from real data; the frozen teacher, with CFG w drawn per sample from ``guidance`` = [w_min, w_max], takes
  one DDIM / Euler step (schedule.ddim_step) to t_{n-1};
* the student jumps from (x_{t_n}, t_n) to t_end with its own prediction; the target (no gradient) is the trainer's
  EMA of the student (``trainer.ema_decay``; Method.ema_model) jumping from the teacher's x_{t_{n-1}} to t_end;
* loss: MSE or pseudo-Huber between the two jumps, plus (``adversarial``, one weight per stage, growing as k falls)
  the non-saturating GAN term of a discriminator that tells the target's jumps from the student's: the critic role,
  a copy of the teacher with a models/heads.py head on its features (SDXL-Lightning's design, arXiv:2402.13929 sec.
  3.3), trained in its own phase with losses.gan_discriminator_loss.

Choices the paper leaves open (README "Hyper-SD: what the paper leaves open"): N = 48 for every stage (each segment is
a whole number of teacher steps for k = 8, 4, 2, 1); start and end times continuous rather than on the N-point grid
(a student trained only on grid times is wrong between them, measured on the toy mixture: tests/test_tscd.py, and
TCD asks for times such as 759 or (1 - eta) t_next that no fixed grid holds); w per sample; the discriminator's real
samples are the target's jumps (d = MSE + adversarial measures the distance between the two jumps' distributions).

A student whose last stage has k > 1 segments samples with Euler / DDIM on the k segment starts (``ode``, fixed). A
k = 1 student is the unified one: the export samples with TCD (inference/sampling.tcd_sample; diffusers'
``TCDScheduler``) at ``sample_steps`` steps with ``sample_eta``, and any other step count on the TCD grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from ..data import Batch
from ..inference.sampling import ode_sample, tcd_sample
from ..inference.spec import SamplingSpec
from ..models.base import DiffusionModel, LoraConfig, freeze, guided, role_copy
from ..models.heads import attach_head, generator_logits
from ..schedule import Schedule
from .base import Method, Role
from .losses import gan_discriminator_loss, gan_generator_loss


@dataclass
class TSCDConfig:
    """TSCD settings. Guidance: the STANDARD CFG form uncond + w (cond - uncond), w uniform in ``guidance``."""

    segments: list[int] = field(default_factory=lambda: [8, 4, 2, 1])   # k per stage, in training order
    stage_steps: list[int] = field(default_factory=list)   # trainer steps of every stage but the last
    teacher_steps: int = 48                 # N: the teacher's solver grid; every k must divide it
    guidance: list[float] = field(default_factory=lambda: [1.0, 1.0])   # [w_min, w_max] of the teacher's CFG
    loss: Literal["mse", "huber"] = "mse"
    huber_c: float = 0.03                   # pseudo-Huber sqrt(mean d^2 + c^2) - c per sample (iCT, arXiv:2310.14189)
    adversarial: list[float] = field(default_factory=list)   # generator GAN weight per stage; [] = none
    critic_weight: float = 1.0              # discriminator loss weight
    noise_offset: float = 0.0               # offset noise on x_{t_n} (Hyper-SD: "noise perturbation for stability")
    sample_steps: int = 4                   # the export's default step count (k = 1 students, TCD grid)
    sample_eta: float = 0.3                 # the export's TCD eta (diffusers' default)
    student_lora: LoraConfig = field(default_factory=LoraConfig)
    critic_lora: LoraConfig = field(default_factory=LoraConfig)


def segment_draw(n_samples: int, teacher_steps: int, segments: int,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(u_n, u_b, u_prev, u_end) [n_samples] float64 in uniform time for one TSCD batch: the start u_n uniform in
    (0, 1]; u_b the lower boundary of its segment (a multiple of 1 / k; a start on a boundary belongs to the segment
    below it); the teacher's step u_prev = max(u_n - 1 / N, u_b); the end uniform in [u_b, u_prev]. So
    u_b <= u_end <= u_prev < u_n <= u_b + 1 / k: start, teacher step and end share one segment."""
    if segments < 1 or teacher_steps % segments:
        raise ValueError(f"{segments} segments do not divide the teacher grid of {teacher_steps} steps: choose "
                         f"method.teacher_steps as a multiple of every entry of method.segments")
    u_n = 1.0 - torch.rand(n_samples, generator=generator, dtype=torch.float64)          # (0, 1]
    u_b = torch.ceil(u_n * segments - 1.0).clamp(min=0) / segments
    u_prev = torch.maximum(u_n - 1.0 / teacher_steps, u_b)
    u_end = u_b + (u_prev - u_b) * torch.rand(n_samples, generator=generator, dtype=torch.float64)
    return u_n, u_b, u_prev, u_end


class StagePlan:
    """Which trainer steps belong to which stage, from ``segments`` and ``stage_steps`` (pure bookkeeping)."""

    def __init__(self, cfg: TSCDConfig) -> None:
        if not cfg.segments or any(k < 1 for k in cfg.segments):
            raise ValueError(f"method.segments must list segment counts >= 1 (e.g. [8, 4, 2, 1]), got {cfg.segments}")
        bad = [k for k in cfg.segments if cfg.teacher_steps % k]
        if cfg.teacher_steps < 1 or bad:
            raise ValueError(f"method.segments {bad or cfg.segments} must divide method.teacher_steps="
                             f"{cfg.teacher_steps} (the teacher grid): e.g. teacher_steps: 48 for segments 8, 4, 2, 1")
        if len(cfg.stage_steps) != len(cfg.segments) - 1 or any(s < 1 for s in cfg.stage_steps):
            raise ValueError(f"method.stage_steps needs {len(cfg.segments) - 1} positive step counts (every stage "
                             f"but the last, which runs until trainer.max_steps), got {cfg.stage_steps}")
        if cfg.adversarial and (len(cfg.adversarial) != len(cfg.segments) or min(cfg.adversarial) < 0):
            raise ValueError(f"method.adversarial needs one weight >= 0 per stage ({len(cfg.segments)}), got "
                             f"{cfg.adversarial}; [] turns the adversarial term off")
        self.segments = list(cfg.segments)
        self.weights = list(cfg.adversarial) or [0.0] * len(cfg.segments)
        self.starts = [sum(cfg.stage_steps[:i]) for i in range(len(cfg.segments))]

    def stage_of(self, step: int) -> int:
        return max(i for i, start in enumerate(self.starts) if step >= start)


class TSCD(Method):
    requires_ema = True
    partial_updates = True      # the discriminator trains through its head only: its output layers get no gradient

    def __init__(self, cfg: TSCDConfig, teacher: DiffusionModel, num_classes: int = 0,
                 student: DiffusionModel | None = None, critic: DiffusionModel | None = None) -> None:
        super().__init__()
        _validate(cfg)
        self.cfg, self.num_classes, self.plan = cfg, num_classes, StagePlan(cfg)
        self.groups = tuple(r.name for r in self.declare_roles(cfg))
        self.teacher = freeze(teacher)
        self.student = student if student is not None else role_copy(teacher, cfg.student_lora)
        if "critic" in self.groups:     # the discriminator: the teacher's features with a head (trains with critic)
            self.critic = critic if critic is not None else role_copy(teacher, cfg.critic_lora)
            attach_head(self.critic)
        self.stage = 0

    @classmethod
    def declare_roles(cls, cfg: TSCDConfig) -> tuple[Role, ...]:
        adversarial = any(w > 0 for w in cfg.adversarial)
        return (Role("student"),) + ((Role("critic"),) if adversarial else ())

    @classmethod
    def build(cls, cfg: TSCDConfig, models: dict[str, DiffusionModel | None], num_classes: int) -> "TSCD":
        return cls(cfg, models["model"], num_classes, models.get("student"), models.get("critic"))

    # ------------------------------------------------------------------ training
    def phases(self, step: int) -> tuple[str, ...]:
        adversarial = self.plan.weights[self.plan.stage_of(step)] > 0
        return ("student", "critic") if adversarial else ("student",)

    def loss(self, phase: str, batch: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        self.stage = self.plan.stage_of(step)
        if phase == "student":
            return self._student_loss(batch)
        return self._critic_loss(batch)

    def jumps(self, batch: Batch, with_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(student jump, target jump, t_end, t_n) for one batch in the current stage's segments."""
        draw = consistency_draw(self.teacher, self.ema_model(), batch, self.plan.segments[self.stage],
                                self.cfg.teacher_steps, self.cfg.guidance, self.cfg.noise_offset)
        with torch.set_grad_enabled(with_grad):
            pred = self.student(draw.x_n, draw.t_n, batch.cond)
            jump = jump_to(self.teacher.schedule, draw.x_n, pred.x0, pred.eps, draw.t_end)
        return jump, draw.target, draw.t_end, draw.t_n

    def _student_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        jump, target, t_end, t_n = self.jumps(batch, with_grad=True)
        distance = consistency_distance(jump, target, self.cfg.loss, self.cfg.huber_c)
        loss, out = distance, {"student/distance": distance.detach(),
                               "student/segments": torch.tensor(float(self.plan.segments[self.stage])),
                               "student/jump": (t_n - t_end).float().mean()}
        weight = self.plan.weights[self.stage]
        if weight > 0:           # gradient reaches the jump through the discriminator (frozen for this forward)
            gan = gan_generator_loss(generator_logits(self.role("critic"), jump, t_end, batch.cond))
            loss = loss + weight * gan
            out["student/gan"] = gan.detach()
        return loss, out

    def _critic_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Discriminator: target jumps (real) against student jumps (fake), one critic forward (DDP)."""
        jump, target, t_end, _ = self.jumps(batch, with_grad=False)
        logits = self.critic(torch.cat([target, jump]), torch.cat([t_end, t_end]), batch.cond.cat(batch.cond),
                             logits_only=True).logits
        real, fake = logits.chunk(2)
        loss = gan_discriminator_loss(real, fake)
        return self.cfg.critic_weight * loss, {"critic/gan": loss.detach()}

    # ------------------------------------------------------------------ sampling
    def preview(self, n: int, seed: int = 0, *, batch: Batch | None = None) -> Tensor:
        return preview_by_spec(self, n, seed, batch)

    def export_model(self) -> DiffusionModel:
        return self.role("student")

    def sampling_spec(self) -> SamplingSpec:
        """k > 1 (last stage): Euler / DDIM on the k segment starts; k = 1: TCD at ``sample_steps`` on its grid."""
        schedule, k = self.teacher.schedule, self.plan.segments[-1]
        if k == 1:
            return tcd_spec(schedule, self.cfg.sample_steps, self.cfg.sample_eta, self.num_classes)
        times = schedule.warp(torch.arange(k, 0, -1, dtype=torch.float64) / k)
        return SamplingSpec("ode", tuple(float(t) for t in times), 1.0, self.num_classes,
                            timesteps=_timesteps(schedule, times), fixed=True)


class ConsistencyDraw(NamedTuple):
    x_n: Tensor         # real data noised to t_n: the student's input
    t_n: Tensor         # [B] float64
    t_end: Tensor       # [B] float64, inside the segment of t_n
    target: Tensor      # the target network's jump from the teacher's x_{t_prev} to t_end (no grad)


def consistency_draw(teacher: DiffusionModel, target_net: DiffusionModel, batch: Batch, segments: int,
                     teacher_steps: int, guidance: list[float], noise_offset: float = 0.0) -> ConsistencyDraw:
    """One TSCD draw without gradients (arXiv:2404.13686 alg. 1): real data noised to t_n, the teacher's one CFG
    step (w uniform per sample in ``guidance``) to t_prev, and ``target_net``'s jump from the teacher's point to
    t_end inside the segment (:func:`segment_draw`). The student's jump from (x_n, t_n) is :func:`jump_to`; callers
    run the student themselves (the one-step enhancement batches it with its DMD sample: one forward per backward)."""
    x0, schedule = batch.x0, teacher.schedule
    u_n, _, u_prev, u_end = segment_draw(x0.shape[0], teacher_steps, segments)
    t_n, t_prev, t_end = (schedule.warp(u).to(x0.device) for u in (u_n, u_prev, u_end))
    eps = torch.randn_like(x0)
    if noise_offset > 0:
        eps = eps + noise_offset * torch.randn(*x0.shape[:2], *([1] * (x0.dim() - 2)), device=x0.device,
                                               dtype=x0.dtype)
    x_n = schedule.add_noise(x0, eps, t_n)
    with torch.no_grad():
        step = guided(teacher, draw_guidance(guidance, x0.shape[0], x0.device), batch.uncond)(x_n, t_n, batch.cond)
        x_prev = schedule.ddim_step(x_n, step.x0, step.eps, t_prev)
        ahead = target_net(x_prev, t_prev, batch.cond)
        target = schedule.ddim_step(x_prev, ahead.x0, ahead.eps, t_end)
        # end = teacher step: the target is the teacher's point itself (the consistency boundary condition
        # f(x, t) = x; evaluating the jump at t_prev = 0 would divide by sigma = 0)
        same = (u_end == u_prev).to(x0.device).reshape(-1, *([1] * (x0.dim() - 1)))
        target = torch.where(same, x_prev, target)
    return ConsistencyDraw(x_n, t_n, t_end, target)


def jump_to(schedule: Schedule, x_n: Tensor, x0: Tensor, eps: Tensor, t_end: Tensor) -> Tensor:
    """The consistency jump: DDIM / Euler from x_n with the predicted (x0, eps) straight to t_end."""
    return schedule.ddim_step(x_n, x0, eps, t_end)


def draw_guidance(guidance: list[float], n: int, device: torch.device) -> float | Tensor:
    """The teacher's CFG scale: a float when the range is one value, else one uniform draw per sample [n]."""
    low, high = guidance
    if low == high:
        return float(low)
    return low + (high - low) * torch.rand(n, device=device)


def consistency_distance(jump: Tensor, target: Tensor, loss: str = "mse", huber_c: float = 0.03) -> Tensor:
    """MSE, or pseudo-Huber sqrt(mean d^2 + c^2) - c per sample (Song & Dhariwal, arXiv:2310.14189 sec. 3.3)."""
    diff = (jump.float() - target.float()).flatten(1)
    if loss == "mse":
        return diff.square().mean()
    return ((diff.square().mean(1) + huber_c * huber_c).sqrt() - huber_c).mean()


@torch.no_grad()
def preview_by_spec(method: Method, n: int, seed: int, batch: Batch | None) -> Tensor:
    """Preview samples of a consistency-style student on its own sampling spec (TCD, or DDIM on fixed times)."""
    student, noise, cond, _ = method.preview_inputs(n, seed, batch)
    spec = method.sampling_spec()
    times = torch.tensor(spec.times, dtype=torch.float64)
    if spec.sampler == "tcd":
        return tcd_sample(student, noise, times, cond, eta=spec.eta)
    return ode_sample(student, noise, times, cond)


def tcd_spec(schedule: Schedule, steps: int, eta: float, num_classes: int) -> SamplingSpec:
    """The unified student's sampling: TCD at ``steps`` on TCD's grid (diffusers' TCDScheduler), guidance 1."""
    times = schedule.step_grid(steps, "tcd")
    return SamplingSpec("tcd", tuple(float(t) for t in times), 1.0, num_classes, "tcd", _timesteps(schedule, times),
                        eta=eta)


def _timesteps(schedule: Schedule, times: Tensor) -> tuple[int, ...]:
    return tuple(round(float(m)) for m in schedule.model_time(times))


def _validate(cfg: TSCDConfig) -> None:
    if len(cfg.guidance) != 2 or cfg.guidance[0] > cfg.guidance[1]:
        raise ValueError(f"method.guidance is the CFG range [w_min, w_max] with w_min <= w_max (e.g. [3.0, 8.0]; "
                         f"[1.0, 1.0] for none), got {cfg.guidance}: the range is empty")
    if cfg.loss not in ("mse", "huber"):
        raise ValueError(f"method.loss must be mse or huber, got {cfg.loss!r}")
    if cfg.huber_c <= 0:
        raise ValueError(f"method.huber_c must be > 0, got {cfg.huber_c}")
    if cfg.noise_offset < 0 or cfg.critic_weight < 0:
        raise ValueError("method.noise_offset and method.critic_weight must be >= 0")
    if not 1 <= cfg.sample_steps <= 50:
        raise ValueError(f"method.sample_steps must lie in 1..50 (the TCD grid), got {cfg.sample_steps}")
    if not 0.0 <= cfg.sample_eta <= 1.0:
        raise ValueError(f"method.sample_eta (TCD's gamma) must lie in [0, 1], got {cfg.sample_eta}")
