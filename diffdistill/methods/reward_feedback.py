"""Reward feedback learning for a few-step student (ReFL, Xu et al., arXiv:2304.05977 sec. 4; Hyper-SD's human
feedback stage, arXiv:2404.13686 sec. 3.2), trained as a SEPARATE LoRA on top of a finished student so it can be
merged at a chosen weight (``diffdistill merge-lora``).

Per student step: from pure noise the student runs its own TCD rollout (inference/sampling.tcd_sample, no grad) on
``rollout_steps`` TCD times to a step j drawn uniformly among those in ``window`` (shared by all ranks); its x0
prediction at t_j, WITH gradients, is scored by the reward model (models/reward.py) and the loss is the hinge
relu(margin - reward) (Hyper-SD's ReLU(alpha - r)). Because a reward alone drifts the student off the data (reward
hacking; ReFL mixes in the pre-training loss), ``consistency_weight`` adds the k = 1 TSCD consistency loss on real
data (methods/tscd.py) in the same student forward (DDP: one forward per backward).

Roles: a frozen ``teacher`` (the consistency term's teacher steps), the trainable ``student``: the recipe's
``student:`` network (the finished unified student) with ``student_lora`` adapters; the EMA of the student is the
consistency target (``trainer.ema_decay``). The export samples like the TSCD / one-step student (TCD).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from ..data import Batch
from ..inference.sampling import tcd_sample
from ..inference.spec import SamplingSpec
from ..models.base import DiffusionModel, LoraConfig, freeze, role_copy
from ..models.reward import Reward, RewardConfig, build_reward
from ..randomness import shared_randint
from .base import Method, Role
from .tscd import consistency_distance, consistency_draw, jump_to, preview_by_spec, tcd_spec


@dataclass
class RewardFeedbackConfig:
    reward: RewardConfig = field(default_factory=RewardConfig)
    margin: float = 0.0                     # hinge threshold alpha: rewards above it give no gradient
    reward_weight: float = 1.0
    rollout_steps: int = 4                  # the student's TCD times the rollout stops on
    window: list[float] = field(default_factory=lambda: [0.0, 1.0])   # stop only at times in [t_lo, t_hi]
    eta: float = 0.3                        # TCD eta of the rollout
    consistency_weight: float = 1.0         # the TSCD term on real data (0: the reward alone)
    teacher_steps: int = 48
    consistency_guidance: list[float] = field(default_factory=lambda: [1.0, 1.0])
    sample_steps: int = 4                   # the export's TCD setting
    sample_eta: float = 0.3
    student_lora: LoraConfig = field(default_factory=lambda: LoraConfig(rank=8))


class RewardFeedback(Method):
    requires_ema: ClassVar[bool] = True
    groups = ("student",)

    def __init__(self, cfg: RewardFeedbackConfig, teacher: DiffusionModel, num_classes: int = 0,
                 student: DiffusionModel | None = None, reward: Reward | None = None) -> None:
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        self.teacher = freeze(teacher)
        self.times = teacher.schedule.step_grid(cfg.rollout_steps, "tcd")
        low, high = cfg.window
        self.stops = [j for j, t in enumerate(self.times.tolist()) if low <= t <= high]
        _validate(cfg, self.stops, self.times)
        if cfg.student_lora.rank == 0:
            raise ValueError("reward feedback trains a separate LoRA on the finished student (Hyper-SD sec. 3.2): set "
                             "method.student_lora.rank > 0")
        if student is None:
            raise ValueError("reward feedback fine-tunes a finished student: give the recipe a `student:` section "
                             "with `pretrained:` (e.g. the TSCD or one-step export)")
        self.student = role_copy(student, cfg.student_lora)
        self.reward = freeze(reward if reward is not None else build_reward(cfg.reward))

    @classmethod
    def declare_roles(cls, cfg: RewardFeedbackConfig) -> tuple[Role, ...]:
        return (Role("student"),)

    @classmethod
    def build(cls, cfg: RewardFeedbackConfig, models: dict[str, DiffusionModel | None],
              num_classes: int) -> "RewardFeedback":
        return cls(cfg, models["model"], num_classes, models.get("student"))

    def loss(self, phase: str, batch: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        x0, n = batch.x0, batch.x0.shape[0]
        j = self.stops[int(shared_randint(0, len(self.stops), device=x0.device))]
        noise = torch.randn_like(x0)
        x_j = self._rollout(noise, j, batch)
        t_j = self.times[j].to(device=x0.device, dtype=torch.float64).expand(n)
        inputs, times, cond = x_j, t_j, batch.cond
        draw = None
        if self.cfg.consistency_weight > 0:     # one student forward for both terms (DDP: one per backward)
            draw = consistency_draw(self.teacher, self.ema_model(), batch, 1, self.cfg.teacher_steps,
                                    self.cfg.consistency_guidance)
            inputs, times, cond = torch.cat([x_j, draw.x_n]), torch.cat([t_j, draw.t_n]), batch.cond.cat(batch.cond)
        pred = self.student(inputs, times, cond)
        reward = self.reward(pred.x0[:n], batch.cond)
        hinge = torch.relu(self.cfg.margin - reward).mean()
        loss = self.cfg.reward_weight * hinge
        out = {"student/reward": reward.mean().detach(), "student/hinge": hinge.detach(),
               "student/stop": torch.tensor(float(j))}
        if draw is not None:
            jump = jump_to(self.teacher.schedule, draw.x_n, pred.x0[n:], pred.eps[n:], draw.t_end)
            mse = consistency_distance(jump, draw.target)
            loss = loss + self.cfg.consistency_weight * mse
            out["student/consistency"] = mse.detach()
        return loss, out

    def _rollout(self, noise: Tensor, j: int, batch: Batch) -> Tensor:
        """The student's own TCD rollout from noise, stopped at time j (its state there, not a clean sample)."""
        with torch.no_grad():
            return tcd_sample(self.student, noise, self.times, batch.cond, eta=self.cfg.eta, stop=j)

    def preview(self, n: int, seed: int = 0, *, batch: Batch | None = None) -> Tensor:
        return preview_by_spec(self, n, seed, batch)

    def export_model(self) -> DiffusionModel:
        return self.role("student")

    def sampling_spec(self) -> SamplingSpec:
        return tcd_spec(self.teacher.schedule, self.cfg.sample_steps, self.cfg.sample_eta, self.num_classes)


def _validate(cfg: RewardFeedbackConfig, stops: list[int], times: Tensor) -> None:
    if len(cfg.window) != 2 or not 0.0 <= cfg.window[0] <= cfg.window[1] <= 1.0:
        raise ValueError(f"method.window is [t_lo, t_hi] within [0, 1], got {cfg.window}")
    if not stops:
        raise ValueError(f"method.window {cfg.window} holds none of the rollout's TCD times "
                         f"{[round(float(t), 3) for t in times]}: widen it or change method.rollout_steps")
    if cfg.reward_weight < 0 or cfg.consistency_weight < 0:
        raise ValueError("method.reward_weight and method.consistency_weight must be >= 0")
    for name, value in (("eta", cfg.eta), ("sample_eta", cfg.sample_eta)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"method.{name} (TCD's gamma) must lie in [0, 1], got {value}")
    if len(cfg.consistency_guidance) != 2 or cfg.consistency_guidance[0] > cfg.consistency_guidance[1]:
        raise ValueError(f"method.consistency_guidance is a CFG range [w_min, w_max], got {cfg.consistency_guidance}: "
                         "the range is empty")
