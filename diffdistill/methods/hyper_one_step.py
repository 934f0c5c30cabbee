"""Hyper-SD's one-step enhancement (arXiv:2404.13686 sec. 3.3): score distillation on the one-step output plus an
MSE term, giving the UNIFIED student that is conditioned at timestep 999 for one step and sampled with TCD
(diffusers' ``TCDScheduler``, eta) at 1, 2, 4 or 8 steps.

It is DMD2 (methods/dmd2.py: the teacher's real score with CFG against a trained fake score, two time-scale updates,
optional GAN term) on a one-step student at t = 1 (``student_times: [1.0]``), with DMD2's student loss called, not
copied, and one addition to the student phase: ``consistency_weight`` times the k = 1 TSCD consistency loss
(methods/tscd.consistency_draw, the trainer's EMA as the target) on real data at random times. The paper does not
say what its MSE term compares; we take TSCD's own loss at one segment, so the student stays a consistency model along
the whole trajectory (the 2-8 step TCD samples) while DMD sharpens its one-step output (README, "Hyper-SD: what the
paper leaves open"). Starts from the TSCD student: ``student: {pretrained: <TSCD export>}`` or ``trainer.init_from``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ..data import Batch
from ..inference.spec import SamplingSpec
from ..models.base import DiffusionModel
from .dmd2 import DMD2, DMD2Config
from .tscd import consistency_distance, consistency_draw, jump_to, preview_by_spec, tcd_spec


@dataclass
class HyperOneStepConfig(DMD2Config):
    """DMD2's settings on a one-step student at t = 1, plus the consistency (MSE) term and the TCD export."""

    student_times: list[float] = field(default_factory=lambda: [1.0])   # timestep 999: Hyper-SD's unified student
    consistency_weight: float = 1.0        # weight of the k = 1 TSCD loss in the student phase (0: plain DMD2)
    teacher_steps: int = 48                # the consistency term's teacher step 1 / N (methods/tscd.py)
    consistency_guidance: list[float] = field(default_factory=lambda: [1.0, 1.0])   # its teacher CFG range
    consistency_loss: Literal["mse", "huber"] = "mse"
    huber_c: float = 0.03
    sample_steps: int = 1                  # the export's default TCD step count (any of 1-8 works)
    sample_eta: float = 1.0                # the export's TCD eta (Hyper-SD's one-step cards use 1.0)


class HyperOneStep(DMD2):
    requires_ema: ClassVar[bool] = True

    def __init__(self, cfg: HyperOneStepConfig, teacher: DiffusionModel, num_classes: int = 0,
                 student: DiffusionModel | None = None, critic: DiffusionModel | None = None) -> None:
        if list(cfg.student_times) != [1.0]:
            raise ValueError(f"the unified Hyper-SD student is one step at t = 1 (timestep 999, TCD's first "
                             f"time); got method.student_times={cfg.student_times}: drop the key")
        if cfg.consistency_weight < 0:
            raise ValueError(f"method.consistency_weight must be >= 0, got {cfg.consistency_weight}")
        if len(cfg.consistency_guidance) != 2 or cfg.consistency_guidance[0] > cfg.consistency_guidance[1]:
            raise ValueError(f"method.consistency_guidance is a CFG range [w_min, w_max] with w_min <= w_max, got "
                             f"{cfg.consistency_guidance}: the range is empty")
        if not 1 <= cfg.sample_steps <= 50 or not 0.0 <= cfg.sample_eta <= 1.0:
            raise ValueError("method.sample_steps must lie in 1..50 and method.sample_eta in [0, 1]")
        super().__init__(cfg, teacher, num_classes, student, critic)
        self._consistency: Tensor | None = None

    def generate(self, batch: Batch, with_grad: bool) -> tuple[Tensor, int]:
        """The one-step sample x0 = student(noise, t = 1); in the student phase the same student forward also takes
        the consistency draw's inputs (DDP allows one forward per backward) and keeps their jumps for the MSE term."""
        self._consistency = None
        if not (with_grad and self.cfg.consistency_weight > 0):
            return super().generate(batch, with_grad)
        draw = consistency_draw(self.teacher, self.ema_model(), batch, 1, self.cfg.teacher_steps,
                                self.cfg.consistency_guidance)
        noise, n = torch.randn_like(batch.x0), batch.x0.shape[0]
        pred = self.student(torch.cat([noise, draw.x_n]), torch.cat([self._t(self.times[0], noise), draw.t_n]),
                            batch.cond.cat(batch.cond))
        x0, eps = pred.x0, pred.eps
        jump = jump_to(self.teacher.schedule, draw.x_n, x0[n:], eps[n:], draw.t_end)
        self._consistency = consistency_distance(jump, draw.target, self.cfg.consistency_loss, self.cfg.huber_c)
        return x0[:n], 0

    def _student_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        loss, out = super()._student_loss(batch)          # DMD2's loss (and GAN term) on the one-step sample
        if self._consistency is not None:
            loss = loss + self.cfg.consistency_weight * self._consistency
            out["student/consistency"] = self._consistency.detach()
        return loss, out

    def preview(self, n: int, seed: int = 0, *, batch: Batch | None = None) -> Tensor:
        return preview_by_spec(self, n, seed, batch)

    def sampling_spec(self) -> SamplingSpec:
        return tcd_spec(self.teacher.schedule, self.cfg.sample_steps, self.cfg.sample_eta, self.num_classes)
