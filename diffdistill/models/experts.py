"""A model made of several experts, each owning one band of noise levels (a mixture of experts over time).

Phased DMD (arXiv:2510.27684 sec. 3) trains one expert per SNR phase of a few-step student, and Wan2.2-A14B ships a
high-noise and a low-noise transformer switched at a boundary timestep. Both are this class: ``boundaries`` (K - 1
times, decreasing) split [0, 1] into K bands; expert 0 answers t >= boundaries[0], expert k answers
boundaries[k-1] > t >= boundaries[k], the last expert everything below. This is diffusers' ``WanPipeline`` rule
(the high-noise ``transformer`` for timesteps >= boundary_ratio * 1000, ``transformer_2`` below).

``only`` pins every call to one expert (Phased DMD's per-phase fake scores are queried at all noise levels).
The experts share one schedule and one prediction kind, so the samplers and losses see an ordinary model.

Export layout: ``expert_0/``, ``expert_1/``, ... each an ordinary export (diffusers folders for the adapters), and
the top-level diffdistill.json with ``kind: experts`` and the boundaries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .base import Cond, DiffusionModel


WAN22_SUBFOLDERS = ("transformer", "transformer_2")     # diffusers' WanPipeline: high-noise, low-noise expert


@dataclass
class ExpertsConfig:
    """Either ``pretrained``: an export folder written by :meth:`Experts.save_pretrained`; or ``experts``: one model
    section per expert, noisiest band first, with ``boundaries``. Wan2.2-A14B as a teacher::

        model:
          kind: experts
          experts:
            - {kind: wan, pretrained: Wan-AI/Wan2.2-T2V-A14B-Diffusers, subfolder: transformer}
            - {kind: wan, pretrained: Wan-AI/Wan2.2-T2V-A14B-Diffusers, subfolder: transformer_2}
          boundaries: [0.875]          # the pipeline's boundary_ratio (I2V: 0.9)
    """

    pretrained: str | None = None
    experts: list[dict[str, Any]] = field(default_factory=list)   # with `pretrained`: the export's record, unused
    boundaries: list[float] = field(default_factory=list)         # with `pretrained`: the export's own are used
    num_experts: int = 0                                       # written by exports


class Experts(DiffusionModel):
    """K experts routed by noise level. Shapes: as the experts' (x_t [B, ...]; t [B])."""

    def __init__(self, experts: Sequence[DiffusionModel] | ExpertsConfig, boundaries: Sequence[float] = ()) -> None:
        super().__init__()
        if isinstance(experts, ExpertsConfig):
            experts, boundaries = _build_experts(experts)
        experts = list(experts)
        bounds = [float(b) for b in boundaries]
        if len(bounds) != len(experts) - 1:
            raise ValueError(f"{len(experts)} experts need {len(experts) - 1} boundaries, got {bounds}")
        if any(not 0.0 < b < 1.0 for b in bounds) or any(b >= a for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"expert boundaries must decrease strictly inside (0, 1), got {bounds}")
        first = experts[0]
        for k, expert in enumerate(experts[1:], 1):
            if expert.kind != first.kind or not expert.schedule.matches(first.schedule):
                raise ValueError(f"expert {k} predicts {expert.kind} on a {expert.schedule.kind} schedule, expert 0 "
                                 f"{first.kind} on {first.schedule.kind}: experts must share kind and schedule")
        self.experts = nn.ModuleList(experts)
        self.boundaries = bounds
        self.schedule, self.kind, self.data_shape = first.schedule, first.kind, first.data_shape
        self.only: int | None = None

    def __len__(self) -> int:
        return len(self.experts)

    def expert_index(self, t: Tensor) -> Tensor:
        """Which expert answers each time: the number of boundaries above t (long, t's shape)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        bounds = torch.tensor(self.boundaries, dtype=torch.float64, device=t.device)
        return (t[..., None] < bounds).sum(-1)

    def predict(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        if self.only is not None:
            return self.experts[self.only].predict(x_t, t, cond)
        index = self.expert_index(t)
        first = int(index[0])
        if bool((index == first).all()):          # the usual case: a batch inside one band, no scatter
            return self.experts[first].predict(x_t, t, cond)
        out: Tensor | None = None
        for k in index.unique().tolist():
            rows = (index == k).nonzero().flatten()
            part = self.experts[k].predict(x_t[rows], t[rows], cond.map(lambda v: v[rows]))
            out = part.new_empty(x_t.shape[:1] + part.shape[1:]) if out is None else out
            out[rows] = part
        return out

    def null_cond(self, cond: Cond) -> Cond:
        return self.experts[0].null_cond(cond)

    def export_config(self) -> dict[str, Any]:
        return {"kind": "experts", "boundaries": list(self.boundaries), "num_experts": len(self.experts),
                "experts": [expert.export_config() for expert in self.experts]}

    def wan22_layout(self) -> bool:
        """Two Wan transformers from a Wan2.2 folder (``transformer`` + ``transformer_2``) without class tokens:
        exported in the layout a stock diffusers ``WanPipeline`` loads (``boundary_ratio`` in model_index.json)."""
        configs = [expert.export_config() for expert in self.experts]
        return (len(configs) == 2 and all(c["kind"] == "wan" and not c.get("num_classes") for c in configs)
                and tuple(c.get("subfolder") for c in configs) == WAN22_SUBFOLDERS)

    def save_pretrained(self, directory: Path, sampling: dict[str, Any] | None = None) -> None:
        """Wan2.2's pipeline layout (``transformer/``, ``transformer_2/``, ``scheduler/``, ``model_index.json`` with
        ``boundary_ratio``) when :meth:`wan22_layout`, else each expert as an export of its own (``expert_<k>/``).
        models/registry.py's ``save_model`` writes the top-level diffdistill.json next to them."""
        from .registry import save_model

        directory = Path(directory)
        if self.wan22_layout():
            for expert in self.experts:          # each writes its own subfolder; the scheduler is the same
                expert.save_pretrained(directory, sampling)
            index = {"_class_name": "WanPipeline", "boundary_ratio": self.boundaries[0],
                     "transformer": ["diffusers", "WanTransformer3DModel"],
                     "transformer_2": ["diffusers", "WanTransformer3DModel"],
                     "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}
            (directory / "model_index.json").write_text(json.dumps(index, indent=2))
            return
        for k, expert in enumerate(self.experts):
            save_model(expert, directory / f"expert_{k}", {"sampling": sampling} if sampling else None)


def _build_experts(cfg: ExpertsConfig) -> tuple[list[DiffusionModel], list[float]]:
    from .registry import build_model, load_model, read_export_meta

    if cfg.pretrained is None and not cfg.experts:
        raise ValueError("model.kind: experts needs `pretrained` (an experts export) or `experts` (one model section "
                         "per expert, noisiest first, with `boundaries`)")
    if cfg.pretrained is None:
        return [build_model(spec, f"model.experts[{k}]") for k, spec in enumerate(cfg.experts)], cfg.boundaries
    directory = Path(cfg.pretrained)
    meta = read_export_meta(directory)["model"]
    count, specs = int(meta.get("num_experts", 0)), meta.get("experts", [])
    if (directory / WAN22_SUBFOLDERS[1]).is_dir() and len(specs) == 2:     # Wan2.2 layout: both from this folder
        return [build_model({**spec, "pretrained": str(directory)}) for spec in specs], list(meta["boundaries"])
    missing = [f"expert_{k}" for k in range(count) if not (directory / f"expert_{k}").is_dir()]
    if count < 1 or missing:
        raise FileNotFoundError(f"{str(directory)!r} is not a complete experts export: expected {count} folders "
                                f"expert_0..expert_{count - 1}, missing {missing}; re-export the run")
    return [load_model(directory / f"expert_{k}") for k in range(count)], list(meta.get("boundaries", []))
