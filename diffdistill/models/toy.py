"""2-D toy models: the analytic Gaussian-mixture teacher (exact x0 at every t) and a small MLP denoiser.

The mixture is the correctness fixture for every method (EDM2's toy example idea): for components
N(mu_k, s_k^2 I) with weights w_k and x_t = alpha x0 + sigma eps,

    p(x_t | k) = N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I)
    E[x0 | x_t, k] = mu_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) (x_t - alpha mu_k)

and the exact denoiser is E[x0 | x_t] = sum_k r_k(x_t) E[x0 | x_t, k] with posterior responsibilities r_k.
Components carry class labels, so the class-conditional denoiser (and hence CFG) is exact too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from ..schedule import Kind, Schedule
from .base import NULL_LABEL, Cond, DiffusionModel


@dataclass
class ScheduleConfig:
    """Which noise schedule a model uses (see :mod:`diffdistill.schedule`)."""

    kind: Literal["vp", "flow"] = "vp"
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    shift: float = 1.0
    num_train_timesteps: int = 1000

    def build(self) -> Schedule:
        if self.kind == "flow":
            return Schedule.flow(self.shift, self.num_train_timesteps)
        return Schedule.vp_from_betas(self.beta_schedule, self.num_train_timesteps, self.beta_start, self.beta_end)


@dataclass
class MixtureConfig:
    """A 2-D Gaussian mixture: ``modes`` points on a circle of ``radius`` (layout ring) or a square grid."""

    layout: Literal["ring", "grid"] = "ring"
    modes: int = 8
    radius: float = 2.0
    std: float = 0.1
    num_classes: int = 1                      # modes are assigned to classes round-robin
    weights: list[float] = field(default_factory=list)   # mode probabilities (normalised); [] = equal
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def __post_init__(self) -> None:
        # Classes hold modes round-robin and a labelled sample draws its class uniformly, then a mode of that class
        # uniformly: with an uneven split some modes would be drawn more often than the mixture says (and the old
        # draw never reached the last ones), so the labelled data would not be this mixture.
        if self.modes < 1 or self.num_classes < 1:
            raise ValueError(f"mixture: modes and num_classes must be >= 1, got modes={self.modes}, "
                             f"num_classes={self.num_classes}")
        if self.weights and (len(self.weights) != self.modes or any(w <= 0 for w in self.weights)):
            raise ValueError(f"mixture.weights needs {self.modes} positive values (one per mode), got {self.weights}")
        if self.weights and self.num_classes > 1:
            raise ValueError("mixture.weights is for unlabelled mixtures (num_classes: 1): labelled data draws its "
                             "class uniformly, which unequal mode weights would contradict")
        if self.modes % self.num_classes:
            raise ValueError(f"mixture: modes={self.modes} is not a multiple of num_classes={self.num_classes}, so "
                             "the classes would hold different numbers of modes and labelled data would not follow "
                             f"the mixture; use e.g. modes={self.modes - self.modes % self.num_classes or self.num_classes}"
                             f" or num_classes in {_divisors(self.modes)}")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def mixture_weights(cfg: MixtureConfig) -> Tensor:
    """Mode probabilities [K] in float64 (equal unless ``cfg.weights``)."""
    w = torch.tensor(cfg.weights, dtype=torch.float64) if cfg.weights else torch.ones(cfg.modes, dtype=torch.float64)
    return w / w.sum()


def mixture_means(cfg: MixtureConfig) -> Tensor:
    """Component means [K, 2] in float64."""
    if cfg.layout == "ring":
        angle = torch.arange(cfg.modes, dtype=torch.float64) * (2 * math.pi / cfg.modes)
        return cfg.radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    side = math.isqrt(cfg.modes)
    if side * side != cfg.modes:
        raise ValueError(f"grid layout needs a square number of modes, got {cfg.modes}")
    axis = torch.linspace(-cfg.radius, cfg.radius, side, dtype=torch.float64)
    return torch.cartesian_prod(axis, axis)


class GaussianMixture(DiffusionModel):
    """Analytic teacher: exact ``x0(x_t, t, class)`` of a 2-D Gaussian mixture under any schedule.

    Shapes: x_t [B, 2]; t [B]; cond.labels [B] (optional; NULL_LABEL or absent = the whole mixture).
    """

    kind: Kind = "x0"

    def __init__(self, cfg: MixtureConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or MixtureConfig()
        self.schedule = self.cfg.schedule.build()
        self.data_shape = (2,)
        self.register_buffer("means", mixture_means(self.cfg), persistent=False)           # [K, 2]
        self.register_buffer("stds", torch.full((self.cfg.modes,), self.cfg.std, dtype=torch.float64), persistent=False)
        self.register_buffer("classes", torch.arange(self.cfg.modes) % self.cfg.num_classes, persistent=False)
        self.register_buffer("weights", mixture_weights(self.cfg), persistent=False)

    def predict(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        alpha, sigma = (c[:, None] for c in self.schedule.alpha_sigma(t))                 # [B, 1]
        x = x_t.double()
        var = alpha**2 * self.stds**2 + sigma**2                                          # [B, K]
        diff = x[:, None, :] - alpha[:, :, None] * self.means                             # [B, K, 2]
        logp = -0.5 * (diff**2).sum(-1) / var - var.log() + self.weights.log()            # 2-D: log det = 2 log sd
        logp = logp + self._class_mask(cond, x.shape[0])
        resp = logp.softmax(dim=1)                                                        # [B, K]
        gain = (alpha * self.stds**2 / var)[:, :, None]                                   # [B, K, 1]
        x0_k = self.means + gain * diff                                                   # [B, K, 2]
        return (resp[:, :, None] * x0_k).sum(1).to(x_t.dtype)

    def _class_mask(self, cond: Cond, batch: int) -> Tensor:
        if cond.labels is None:
            return torch.zeros(batch, self.cfg.modes, dtype=torch.float64, device=self.means.device)
        labels = cond.labels.to(self.means.device)
        keep = (self.classes[None, :] == labels[:, None]) | (labels[:, None] == NULL_LABEL)
        return torch.where(keep, 0.0, -math.inf).double()

    def sample_data(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples from the mixture (or from the components of ``labels``), [n, 2] float32."""
        if labels is None and self.cfg.weights:
            comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        elif labels is None:        # equal weights: the same draws as before weights existed (committed results)
            comp = torch.randint(self.cfg.modes, (n,), generator=generator)
        else:   # draw uniformly among the components of each sample's class
            per_class = self.cfg.modes // self.cfg.num_classes
            pick = torch.randint(per_class, (n,), generator=generator)
            comp = labels.long() + pick * self.cfg.num_classes
        noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return (self.means[comp] + self.stds[comp, None] * noise).float()

    def export_config(self) -> dict:
        from dataclasses import asdict
        return {"kind": "toy_gmm", **asdict(self.cfg)}


@dataclass
class MLPConfig:
    """A small time-conditioned MLP denoiser for 2-D data (the toy student / teacher network)."""

    hidden: int = 128
    layers: int = 3
    prediction: Literal["x0", "eps", "v", "flow"] = "eps"
    num_classes: int = 0                      # > 0 adds a class embedding (+1 null class for CFG)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


class MLPDenoiser(DiffusionModel):
    """MLP on [x_t, Fourier features of t, class embedding]. Shapes: x_t [B, 2]; t [B]; cond.labels [B]."""

    lora_targets = ("body.0", "body.2")

    def __init__(self, cfg: MLPConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or MLPConfig()
        self.schedule, self.kind, self.data_shape = self.cfg.schedule.build(), self.cfg.prediction, (2,)
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000), 16)), persistent=False)
        width = self.cfg.hidden
        self.label_embed = nn.Embedding(self.cfg.num_classes + 1, width) if self.cfg.num_classes else None
        layers: list[nn.Module] = [nn.Linear(2 + 32, width), nn.SiLU()]
        for _ in range(self.cfg.layers - 1):
            layers += [nn.Linear(width, width), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width, 2)

    def lora_network(self) -> nn.Module:
        return self

    def feature_spec(self):
        from .heads import FeatureSpec

        return FeatureSpec(f"body.{len(self.body) - 1}", self.cfg.hidden, spatial=False)   # the last hidden activation

    def predict(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        if x_t.dim() != 2 or x_t.shape[1] != 2:
            raise ValueError(f"MLPDenoiser expects x_t of shape [B, 2], got {list(x_t.shape)}")
        angle = t.float()[:, None] * self.freqs                                           # [B, 16]
        h = torch.cat([x_t, angle.sin(), angle.cos()], dim=1)
        h = self.body[0](h)
        if self.label_embed is not None:
            labels = cond.labels if cond.labels is not None else torch.full_like(t, NULL_LABEL, dtype=torch.long)
            h = h + self.label_embed(torch.where(labels == NULL_LABEL, self.cfg.num_classes, labels).long())
        for layer in self.body[1:]:
            h = layer(h)
        return self.out(h)

    def export_config(self) -> dict:
        from dataclasses import asdict
        return {"kind": "mlp", **asdict(self.cfg)}
