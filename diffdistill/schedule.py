"""Noise schedules: the only home of parameterisation maths in diffdistill.

Time convention used everywhere outside the adapters: continuous ``t`` in [0, 1], 1 = the noisiest level the network
was trained on, and

    x_t = alpha(t) * x0 + sigma(t) * eps.

Two families cover the models we distil:

* ``Schedule.vp(alphas_cumprod)``: the DDPM tables of the SD family (SD1.5, SDXL). ``t = tau / (N - 1)`` for the
  integer training timestep ``tau`` in 0..N-1; between table entries log(alpha_bar) is interpolated linearly, so
  any ``t`` is valid and grid points reproduce the table exactly.
* ``Schedule.flow(shift)``: rectified flow (Wan, SD3, Flux) with ``alpha = 1 - t`` and ``sigma = t``; the network is
  fed ``t * N``. ``shift`` warps step grids and time samplers (SD3 paper, eq. 23), never the definition of ``t``.

Prediction kinds (``Kind``), all defined through the same ``x_t``:

* ``x0``   the clean sample,
* ``eps``  the noise,
* ``v``    ``alpha * eps - sigma * x0`` (Salimans & Ho 2022, diffusers' "v_prediction"),
* ``flow`` ``eps - x0``, the rectified-flow velocity ``d x_t / d t`` when alpha = 1 - t (what Wan predicts).

All conversions run in float64 and are cast back to the input dtype: the eps -> x0 division by alpha(t) amplifies
float32 error by up to 1 / 0.07 at t = 1 on SD's table (DMD2 and Self-Forcing both cast by hand for this reason).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
from torch import Tensor

Kind = Literal["x0", "eps", "v", "flow"]
KINDS: tuple[Kind, ...] = ("x0", "eps", "v", "flow")
BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
Spacing = Literal["leading", "trailing", "linspace", "tcd"]
TCD_ORIGINAL_STEPS = 50       # diffusers' TCDScheduler default ``original_inference_steps`` (its coarse grid)


def make_betas(kind: BetaSchedule, num_train_timesteps: int = 1000, beta_start: float = 0.00085,
               beta_end: float = 0.012) -> Tensor:
    """DDPM beta table, the same three recipes as diffusers' ``DDPMScheduler`` (float64).

    ``scaled_linear`` is Stable Diffusion's: linear in sqrt(beta). ``squaredcos_cap_v2`` is Nichol & Dhariwal 2021's
    cosine schedule with betas capped at 0.999.
    """
    n = num_train_timesteps
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    if kind == "squaredcos_cap_v2":
        def alpha_bar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"unknown beta schedule {kind!r}; choose one of linear, scaled_linear, squaredcos_cap_v2")


def shift_t(t: Tensor | float, shift: float) -> Tensor | float:
    """Time shift ``s t / (1 + (s - 1) t)`` (SD3 eq. 23; Wan uses s = 5..8). Maps 0 -> 0 and 1 -> 1, monotone."""
    return shift * t / (1 + (shift - 1) * t)


def unshift_t(t: Tensor | float, shift: float) -> Tensor | float:
    """Inverse of :func:`shift_t`."""
    return t / (shift - (shift - 1) * t)


@dataclass(frozen=True, eq=False)
class Schedule:
    """A noise schedule: alpha(t), sigma(t), the model-time mapping, step grids and time samplers.

    Build it with :meth:`vp`, :meth:`flow` or :meth:`from_diffusers_config`; do not call the constructor directly.
    """

    kind: Literal["vp", "flow"]
    num_train_timesteps: int = 1000
    shift: float = 1.0
    log_alphas_cumprod: Tensor | None = field(default=None, repr=False)   # [N] float64, VP only

    # ------------------------------------------------------------------ construction
    @classmethod
    def vp(cls, alphas_cumprod: Tensor | Sequence[float]) -> "Schedule":
        """VP schedule from a DDPM ``alphas_cumprod`` table of N entries (index = training timestep)."""
        table = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if table.numel() < 2 or not bool(((table > 0) & (table <= 1)).all()):
            raise ValueError("alphas_cumprod must hold at least 2 values in (0, 1]")
        if not bool((table[1:] <= table[:-1]).all()):
            raise ValueError("alphas_cumprod must be non-increasing (timestep 0 = least noise)")
        return cls("vp", int(table.numel()), 1.0, table.log())

    @classmethod
    def vp_from_betas(cls, beta_schedule: BetaSchedule = "scaled_linear", num_train_timesteps: int = 1000,
                      beta_start: float = 0.00085, beta_end: float = 0.012) -> "Schedule":
        """VP schedule from a beta recipe; the defaults are Stable Diffusion's (SD1.5 and SDXL)."""
        betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
        return cls.vp(torch.cumprod(1 - betas, 0))

    @classmethod
    def flow(cls, shift: float = 1.0, num_train_timesteps: int = 1000) -> "Schedule":
        """Rectified flow, alpha = 1 - t, sigma = t; ``shift`` warps grids and samplers (Wan 2.1 uses 5 at 480p)."""
        if shift <= 0:
            raise ValueError(f"flow shift must be > 0, got {shift}")
        return cls("flow", int(num_train_timesteps), float(shift), None)

    @classmethod
    def from_diffusers_config(cls, config: dict) -> "Schedule":
        """Read a diffusers scheduler config (``scheduler_config.json`` as a dict) into a Schedule.

        Flow-matching schedulers are recognised by their ``shift`` key; everything else is read as a DDPM table.
        """
        name = str(config.get("_class_name", ""))
        n = int(config.get("num_train_timesteps", 1000))
        if config.get("use_flow_sigmas") or config.get("prediction_type") == "flow_prediction":
            # diffusers' Wan folders ship UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=...) next to
            # VP-looking beta keys: it is rectified flow with shift = flow_shift
            return cls.flow(float(config.get("flow_shift", config.get("shift", 1.0))), n)
        if "FlowMatch" in name or ("shift" in config and "beta_schedule" not in config):
            if config.get("use_dynamic_shifting"):
                raise ValueError(f"{name}: resolution-dependent (dynamic) shifting is not supported yet; pass a fixed "
                                 "shift with Schedule.flow(shift)")
            return cls.flow(float(config.get("shift", 1.0)), n)
        if config.get("rescale_betas_zero_snr"):
            raise ValueError(f"{name}: rescale_betas_zero_snr (zero terminal SNR, Lin et al. 2024) is not supported "
                             "yet: its last table entry is pure noise, where eps -> x0 is undefined")
        if config.get("trained_betas") is not None:
            betas = torch.as_tensor(config["trained_betas"], dtype=torch.float64)
            return cls.vp(torch.cumprod(1 - betas, 0))
        return cls.vp_from_betas(config.get("beta_schedule", "linear"), n, float(config.get("beta_start", 0.0001)),
                                 float(config.get("beta_end", 0.02)))

    # ------------------------------------------------------------------ alpha, sigma
    def matches(self, other: "Schedule", atol: float = 1e-6) -> bool:
        """Same kind and the same alpha(t), sigma(t) on a grid of t: two networks that can share noised inputs."""
        if self.kind != other.kind:
            return False
        t = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
        return all(torch.allclose(a, b, atol=atol) for a, b in zip(self.alpha_sigma(t), other.alpha_sigma(t)))

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha(t), sigma(t))`` in float64, same shape as ``t``."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.kind == "flow":
            return 1 - t, t.clone()
        table = self.log_alphas_cumprod.to(t.device)
        tau = t.clamp(0, 1) * (self.num_train_timesteps - 1)
        lo = tau.floor().long().clamp(max=self.num_train_timesteps - 2)
        frac = tau - lo
        log_ab = table[lo] * (1 - frac) + table[lo + 1] * frac
        alpha_bar = log_ab.exp()
        return alpha_bar.sqrt(), (1 - alpha_bar).clamp_min(0).sqrt()

    def model_time(self, t: Tensor) -> Tensor:
        """The time the network was trained with: VP timesteps 0..N-1 (float), flow ``t * N``."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return t * (self.num_train_timesteps - 1) if self.kind == "vp" else t * self.num_train_timesteps

    def t_from_model_time(self, model_time: Tensor | Sequence[float]) -> Tensor:
        """Inverse of :meth:`model_time` (e.g. a diffusers ``scheduler.timesteps`` list -> our ``t``), float64."""
        m = torch.as_tensor(model_time, dtype=torch.float64)
        return m / (self.num_train_timesteps - 1) if self.kind == "vp" else m / self.num_train_timesteps

    # ------------------------------------------------------------------ noising and conversions
    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """``x_t = alpha(t) x0 + sigma(t) eps``. Shapes: x0, eps [B, ...]; t [B] (or broadcastable to x0)."""
        alpha, sigma = (_expand(c, x0) for c in self.alpha_sigma(t))
        return (alpha * x0.double() + sigma * eps.double()).to(x0.dtype)

    def convert(self, pred: Tensor, x_t: Tensor, t: Tensor, src: Kind, dst: Kind) -> Tensor:
        """Convert a prediction of kind ``src`` to kind ``dst`` at (x_t, t), in float64, cast back to pred's dtype.

        Shapes: pred, x_t [B, ...]; t [B] (or broadcastable).
        """
        _check_kind(src), _check_kind(dst)
        if src == dst:
            return pred
        alpha, sigma = (_expand(c, x_t) for c in self.alpha_sigma(t))
        x0, eps = _to_x0_eps(pred.double(), x_t.double(), alpha, sigma, src)
        return _from_x0_eps(x0, eps, alpha, sigma, dst).to(pred.dtype)

    def target(self, kind: Kind, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """Regression target of a ``kind``-predicting network for clean ``x0`` noised with ``eps`` at ``t``."""
        _check_kind(kind)
        alpha, sigma = (_expand(c, x0) for c in self.alpha_sigma(t))
        return _from_x0_eps(x0.double(), eps.double(), alpha, sigma, kind).to(x0.dtype)

    # ------------------------------------------------------------------ noising from an intermediate time s
    def transition(self, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha_{t|s}, sigma_{t|s})`` of the forward transition q(x_t | x_s) for t > s, in float64:
        ``alpha_{t|s} = alpha_t / alpha_s`` and ``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2`` (Kingma et al.
        2021, arXiv:2107.00630 eq. 2-3), so noising x0 to s and then s to t is noising x0 to t. Phased DMD
        (arXiv:2510.27684 sec. 3) re-noises its intermediate samples x_s with it."""
        t, s = torch.as_tensor(t, dtype=torch.float64), torch.as_tensor(s, dtype=torch.float64)
        if bool((t < s).any()):
            raise ValueError("transition(t, s) needs t >= s (noising only adds noise); got t < s")
        (alpha_t, sigma_t), (alpha_s, sigma_s) = self.alpha_sigma(t), self.alpha_sigma(s)
        alpha_ts = alpha_t / alpha_s
        return alpha_ts, (sigma_t**2 - alpha_ts**2 * sigma_s**2).clamp_min(0).sqrt()

    def add_noise_from(self, x_s: Tensor, eps: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """``x_t = alpha_{t|s} x_s + sigma_{t|s} eps``: a sample at time ``s`` noised further to ``t`` (t >= s).
        Shapes: x_s, eps [B, ...]; t, s [B] (or broadcastable)."""
        alpha, sigma = (_expand(c, x_s) for c in self.transition(t, s))
        return (alpha * x_s.double() + sigma * eps.double()).to(x_s.dtype)

    def subinterval_target(self, kind: Kind, x_s: Tensor, eps: Tensor, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """The score-matching target of a ``kind``-predicting network on ``x_t = add_noise_from(x_s, eps, t, s)``
        when only x_s (not x0) is known, in the stable form of Phased DMD (arXiv:2510.27684 eq. 11-13): returns
        ``(sigma_{t|s} * target, sigma_{t|s})``.

        The denoising-score-matching target of grad log p_t(x_t) given x_s is ``-eps / sigma_{t|s}``; read through
        the network's parameterisation it is eps_hat = sigma_t eps / sigma_{t|s} and
        x0_hat = x_s / alpha_s - alpha_t sigma_s^2 eps / (alpha_s^2 sigma_{t|s}) (eq. 12; for flow eq. 11:
        (alpha_s^2 sigma_t + alpha_t sigma_s^2) / (alpha_s^2 sigma_{t|s}) eps - x_s / alpha_s), which at s = 0 is
        the plain target. Both blow up as t -> s, so the target is returned multiplied by sigma_{t|s} (finite; eq. 13);
        a loss compares it with ``sigma_{t|s} * prediction``. Shapes: x_s, eps [B, ...]; t, s [B]."""
        _check_kind(kind)
        alpha_t, sigma_t = (_expand(c, x_s) for c in self.alpha_sigma(t))
        alpha_s, sigma_s = (_expand(c, x_s) for c in self.alpha_sigma(s))
        sigma_flat = self.transition(t, s)[1]
        sigma_ts = _expand(sigma_flat, x_s)
        x, e = x_s.double(), eps.double()
        scaled_x0 = sigma_ts * x / alpha_s - alpha_t * sigma_s**2 / alpha_s**2 * e
        scaled_eps = sigma_t * e
        scaled = _from_x0_eps(scaled_x0, scaled_eps, alpha_t, sigma_t, kind)    # linear in (x0, eps)
        return scaled.to(x_s.dtype), sigma_flat

    def ddim_step(self, x_t: Tensor, x0: Tensor, eps: Tensor, t_next: Tensor) -> Tensor:
        """Deterministic step to ``t_next`` keeping the predicted (x0, eps): DDIM with eta = 0 (Song et al. 2021).

        The same update is Euler on the probability-flow ODE in (x / alpha, sigma / alpha) coordinates, i.e. what
        diffusers' ``EulerDiscreteScheduler`` does, and plain Euler for rectified flow (``FlowMatchEulerDiscrete``).
        """
        alpha, sigma = (_expand(c, x_t) for c in self.alpha_sigma(t_next))
        return (alpha * x0.double() + sigma * eps.double()).to(x_t.dtype)

    # ------------------------------------------------------------------ grids and samplers
    def step_grid(self, num_steps: int, spacing: Spacing = "trailing", steps_offset: int = 0) -> Tensor:
        """Sampling times from noisy to clean, float64, ``num_steps`` values (the terminal clean point excluded).

        VP grids reproduce diffusers' integer ``timestep_spacing`` rules (``leading`` with ``steps_offset``,
        ``trailing``, ``linspace``). Flow grids reproduce ``FlowMatchEulerDiscreteScheduler.set_timesteps``:
        ``shift(linspace(1, shift(1/N), n))`` (diffusers shifts the last point twice; we keep that for agreement).

        ``tcd`` is ``TCDScheduler.set_timesteps`` (Zheng et al. 2024, arXiv:2402.19159): ``num_steps`` points picked
        at evenly spaced indices from the coarse grid of TCD_ORIGINAL_STEPS times (VP: timesteps 19, 39, ..., 999;
        flow: the same fractions of 1, shifted), so 1 step is t = 1, 2 steps 999/499, 4 steps 999/759/499/259.
        """
        n_train = self.num_train_timesteps
        if not 1 <= num_steps <= n_train:
            raise ValueError(f"num_steps must be in 1..{n_train}, got {num_steps}")
        if spacing == "tcd":
            return self._tcd_grid(num_steps)
        if self.kind == "flow":
            last = shift_t(1.0 / n_train, self.shift)
            return shift_t(torch.linspace(1.0, last, num_steps, dtype=torch.float64), self.shift)
        if spacing == "leading":
            taus = torch.arange(num_steps, dtype=torch.float64).flip(0) * (n_train // num_steps) + steps_offset
        elif spacing == "trailing":
            taus = torch.round(torch.arange(n_train, 0, -n_train / num_steps, dtype=torch.float64)) - 1
        elif spacing == "linspace":
            taus = torch.linspace(0, n_train - 1, num_steps, dtype=torch.float64).round().flip(0)
        else:
            raise ValueError(f"unknown spacing {spacing!r}; choose leading, trailing, linspace or tcd")
        return self.t_from_model_time(taus.clamp(0, n_train - 1))

    def _tcd_grid(self, num_steps: int) -> Tensor:
        original = TCD_ORIGINAL_STEPS
        if num_steps > original:
            raise ValueError(f"the TCD grid has {original} points; num_steps must be <= {original}, got {num_steps}")
        picks = torch.floor(torch.linspace(0, original, num_steps + 1, dtype=torch.float64)[:-1]).long()
        fractions = torch.arange(original, 0, -1, dtype=torch.float64)[picks] / original    # 1, ..., 1/original
        if self.kind == "flow":
            return shift_t(fractions, self.shift)
        k = self.num_train_timesteps // original
        return self.t_from_model_time(torch.round(fractions * original) * k - 1)

    def warp(self, u: Tensor | float) -> Tensor:
        """The time ``t`` of a uniform variable u in [0, 1]: flow schedules apply their shift (the teacher samples on
        the shifted grid), VP tables none. Segment boundaries and training times of consistency methods are drawn
        uniformly in u (Hyper-SD, arXiv:2404.13686 sec. 3.1). Float64."""
        u = torch.as_tensor(u, dtype=torch.float64)
        return shift_t(u, self.shift) if self.kind == "flow" else u

    def tcd_time(self, t_next: Tensor, eta: float) -> Tensor:
        """The intermediate time s = (1 - eta) t_next a TCD step lands on before it re-noises to t_next
        (arXiv:2402.19159 sec. 4.3, "strategic stochastic sampling"; eta is its gamma). VP floors the integer
        timestep as diffusers' TCDScheduler does, so our samples and a stock pipeline's agree. Float64."""
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"TCD eta (gamma) must lie in [0, 1], got {eta}")
        t_next = torch.as_tensor(t_next, dtype=torch.float64)
        if self.kind == "flow":
            return (1.0 - eta) * t_next
        return self.t_from_model_time(torch.floor((1.0 - eta) * torch.round(self.model_time(t_next))))

    def sample_t(self, n: int, *, sampler: Literal["uniform", "logit_normal"] = "uniform", t_min: float = 0.0,
                 t_max: float = 1.0, shifted: bool = False, logit_mean: float = 0.0, logit_std: float = 1.0,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
        """Draw ``n`` training times in [t_min, t_max] (float32).

        ``uniform`` or ``logit_normal`` (SD3 sec. 3.1) on [0, 1], mapped affinely onto the sub-range; ``shifted``
        applies this schedule's time shift after the mapping (flow models trained with a shift).
        """
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        if sampler == "uniform":
            u = torch.rand(n, generator=generator, dtype=torch.float64)
        elif sampler == "logit_normal":
            u = torch.sigmoid(logit_mean + logit_std * torch.randn(n, generator=generator, dtype=torch.float64))
        else:
            raise ValueError(f"unknown time sampler {sampler!r}; choose uniform or logit_normal")
        t = t_min + (t_max - t_min) * u
        if shifted:
            t = shift_t(t, self.shift)
        return t.float().to(device) if device is not None else t.float()


# ---------------------------------------------------------------------- helpers (float64 maths)
def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown prediction kind {kind!r}; choose one of {', '.join(KINDS)}")


def _expand(c: Tensor, like: Tensor) -> Tensor:
    """Broadcast a per-sample coefficient [B] (or [B, T] for video) against ``like`` [B, ...]."""
    c = c.to(like.device)
    return c.reshape(*c.shape, *([1] * (like.dim() - c.dim())))


def _to_x0_eps(pred: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor, src: Kind) -> tuple[Tensor, Tensor]:
    if src == "x0":
        return pred, (x_t - alpha * pred) / sigma
    if src == "eps":
        return (x_t - sigma * pred) / alpha, pred
    if src == "v":      # v = alpha eps - sigma x0  and  x_t = alpha x0 + sigma eps, solved for (x0, eps)
        norm = alpha**2 + sigma**2
        return (alpha * x_t - sigma * pred) / norm, (sigma * x_t + alpha * pred) / norm
    # flow: f = eps - x0, so x_t = (alpha + sigma) x0 + sigma f
    x0 = (x_t - sigma * pred) / (alpha + sigma)
    return x0, pred + x0


def _from_x0_eps(x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor, dst: Kind) -> Tensor:
    if dst == "x0":
        return x0
    if dst == "eps":
        return eps
    if dst == "v":
        return alpha * eps - sigma * x0
    return eps - x0
