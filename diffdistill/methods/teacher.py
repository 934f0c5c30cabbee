"""Plain diffusion / flow-matching training: how the benchmark teachers are built (DDPM, Ho et al. 2020;
rectified flow, Liu et al. 2023). The loss is the MSE to the target of the network's native parameterisation
(eps, v, x0 or flow), so SD-style eps-prediction UNets and Wan-style flow transformers train the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from ..data import Batch
from ..models.base import NULL_LABEL, Cond, DiffusionModel, guided
from ..inference.sampling import ode_sample
from ..inference.spec import SamplingSpec
from .base import Method, Role
from .losses import denoising_loss


@dataclass
class TeacherConfig:
    """Denoising / flow-matching training of one network."""

    t_sampler: Literal["uniform", "logit_normal"] = "uniform"
    t_min: float = 0.0
    t_max: float = 1.0
    shifted: bool = False             # draw t through the schedule's time shift (flow models trained with a shift)
    cond_dropout: float = 0.1         # share of labels replaced by the null label, so CFG works at sampling time
    noise_offset: float = 0.0         # offset noise (losses.denoising_loss): needed for dark/bright data on SD's table
    preview_steps: int = 50           # ODE steps for preview samples
    preview_guidance: float = 1.0     # standard-form CFG scale for previews (1 = no guidance)
    preview_spacing: Literal["leading", "trailing", "linspace"] = "trailing"


class Teacher(Method):
    groups = ("model",)

    def __init__(self, cfg: TeacherConfig, model: DiffusionModel, num_classes: int = 0) -> None:
        super().__init__()
        if not 0.0 <= cfg.cond_dropout <= 1.0:
            raise ValueError(f"method.cond_dropout must lie in [0, 1], got {cfg.cond_dropout}")
        if cfg.noise_offset < 0:
            raise ValueError(f"method.noise_offset must be >= 0 (typical: 0.05-0.1), got {cfg.noise_offset}")
        self.cfg, self.model, self.num_classes = cfg, model, num_classes
        self.schedule = model.schedule

    @classmethod
    def declare_roles(cls, cfg: TeacherConfig) -> tuple[Role, ...]:
        return (Role("model", section=False),)      # the recipe's `model:` section itself

    @classmethod
    def build(cls, cfg: TeacherConfig, models: dict[str, DiffusionModel | None], num_classes: int) -> "Teacher":
        return cls(cfg, models["model"], num_classes)

    def loss(self, phase: str, batch: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        x0, cond = batch.x0, self._dropout(batch.cond)
        t = self.schedule.sample_t(x0.shape[0], sampler=self.cfg.t_sampler, t_min=self.cfg.t_min,
                                   t_max=self.cfg.t_max, shifted=self.cfg.shifted, device=x0.device)
        loss = denoising_loss(self.model, self.schedule, x0, t, cond, noise_offset=self.cfg.noise_offset)
        return loss, {"model/denoise": loss.detach()}

    def _dropout(self, cond: Cond) -> Cond:
        if cond.labels is None or self.cfg.cond_dropout == 0:
            return cond
        drop = torch.rand(cond.labels.shape, device=cond.labels.device) < self.cfg.cond_dropout
        return replace(cond, labels=torch.where(drop, NULL_LABEL, cond.labels))

    @torch.no_grad()
    def preview(self, n: int, seed: int = 0, *, batch: Batch | None = None) -> Tensor:
        model, noise, cond, uncond = self.preview_inputs(n, seed, batch)
        guide = cond is not None and self.cfg.preview_guidance != 1.0
        sampler = guided(model, self.cfg.preview_guidance, uncond) if guide else model
        ts = self.schedule.step_grid(self.cfg.preview_steps, self.cfg.preview_spacing)
        return ode_sample(sampler, noise, ts, cond)

    def export_model(self) -> DiffusionModel:
        return self.role("model")

    def sampling_spec(self) -> SamplingSpec:
        times = self.schedule.step_grid(self.cfg.preview_steps, self.cfg.preview_spacing)
        return SamplingSpec("ode", tuple(float(t) for t in times), self.cfg.preview_guidance, self.num_classes,
                            self.cfg.preview_spacing)
