"""ODE-regression initialisation of a block-causal video student (CausVid, Yin et al., arXiv:2412.07772, sec. 3.3;
Self Forcing, Huang et al., arXiv:2506.08009, sec. 4 "initialise with ODE regression").

The student (a block-causal copy of the bidirectional teacher, models/causal.py) learns to jump from the teacher's
ODE states straight to their clean endpoint (data: ``ode_pairs``, written by ``diffdistill ode-pairs``). Per sample
every chunk independently takes one of the stored noise levels, so one parallel forward under the block-causal mask
trains every chunk at every level against noisy earlier chunks; the loss is the MSE of the predicted x0 to the
endpoint. Its export is the causal student self forcing starts from (``roles: {student: {pretrained: ...}}``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import Batch
from ..inference.spec import SamplingSpec
from ..inference.streaming import causal_sample
from ..models.base import DiffusionModel, role_copy
from .base import Method


@dataclass
class ODERegressionConfig:
    """``student_times``: the few-step times the pairs were written at (checked against the data)."""

    student_times: list[float] = field(default_factory=lambda: [1.0, 0.9, 0.75, 0.5])
    chunk_frames: int = 1
    window_chunks: int = 0


class ODERegression(Method):
    groups = ("student",)

    def __init__(self, cfg: ODERegressionConfig, teacher: DiffusionModel, num_classes: int = 0,
                 student: DiffusionModel | None = None) -> None:
        super().__init__()
        if student is None and not hasattr(teacher, "make_causal"):
            raise ValueError(f"ode_regression initialises a causal video student (model.kind: wan); got a "
                             f"{type(teacher).__name__}")
        self.cfg, self.num_classes = cfg, num_classes
        self.times = torch.tensor(cfg.student_times, dtype=torch.float64)
        self.student = student if student is not None else role_copy(teacher).make_causal(cfg.chunk_frames,
                                                                                           cfg.window_chunks)

    @classmethod
    def build(cls, cfg: ODERegressionConfig, models: dict[str, DiffusionModel | None],
              num_classes: int) -> "ODERegression":
        return cls(cfg, models["model"], num_classes, models.get("student"))

    def loss(self, phase: str, batch: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        if batch.states is None or batch.state_times is None:
            raise ValueError("ode_regression trains on teacher trajectories: set data: {name: ode_pairs, path: ...} "
                             "(written by `diffdistill ode-pairs`)")
        if not torch.allclose(batch.state_times.double().cpu(), self.times):
            raise ValueError(f"the ODE pairs were written at times {batch.state_times.tolist()} but "
                             f"method.student_times={self.cfg.student_times}: rewrite the pairs or match the times")
        b, levels, frames = batch.states.shape[:3]
        chunk = self.cfg.chunk_frames
        # one level per (sample, chunk), expanded to the chunk's frames
        level = torch.randint(levels, (b, frames // chunk), device=batch.x0.device).repeat_interleave(chunk, dim=1)
        pick = level[:, None, :, None, None, None].expand(b, 1, *batch.states.shape[2:])
        x_t = batch.states.gather(1, pick).squeeze(1)
        t = self.times.to(batch.x0.device)[level]                                       # per-frame times [B, T]
        x0 = self.student(x_t, t, batch.cond).x0
        loss = F.mse_loss(x0.float(), batch.x0.float())
        return loss, {"student/ode": loss.detach()}

    @torch.no_grad()
    def preview(self, n: int, seed: int = 0, *, batch: Batch | None = None) -> Tensor:
        student, noise, cond, _ = self.preview_inputs(n, seed, batch)
        return causal_sample(student, noise, self.times, cond)

    def export_model(self) -> DiffusionModel:
        return self.role("student")

    def sampling_spec(self) -> SamplingSpec:
        return SamplingSpec("few_step", tuple(self.cfg.student_times), 1.0, self.num_classes,
                            chunk_frames=self.cfg.chunk_frames)
