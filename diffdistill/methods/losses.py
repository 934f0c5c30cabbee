"""Losses shared by the methods: denoising in any parameterisation, the DMD gradient surrogate, GAN losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.base import Cond, DiffusionModel
from ..schedule import Schedule


def denoising_loss(model: DiffusionModel, schedule: Schedule, x0: Tensor, t: Tensor, cond: Cond | None = None,
                   noise_offset: float = 0.0) -> Tensor:
    """MSE to the target of the model's native parameterisation (eps, v, x0 or flow) at times ``t``.

    DDPM (Ho et al. 2020) for eps, rectified flow (Liu et al. 2023) for flow; the same call trains teachers and
    DMD critics ("fake score"). ``model`` may be a DDP wrapper, hence the explicit schedule. Shapes: x0 [B, ...]; t [B].

    ``noise_offset`` > 0 adds one Gaussian constant per sample and channel to the noise (offset noise, Guttenberg
    2023; SDXL trains with 0.0357). On a schedule whose terminal SNR is not zero (SD's scaled-linear table keeps
    alpha(1) = 0.068), the mean of x_1 still carries the image's mean brightness, so a model sampled from pure noise
    (mean 0) draws mid-grey images (Lin et al. 2024); a random offset makes that mean uninformative to the network.
    """
    if noise_offset < 0:
        raise ValueError(f"noise_offset must be >= 0, got {noise_offset}")
    eps = torch.randn_like(x0)
    if noise_offset > 0:
        eps = eps + noise_offset * torch.randn(*x0.shape[:2], *([1] * (x0.dim() - 2)), device=x0.device,
                                               dtype=x0.dtype)
    x_t = schedule.add_noise(x0, eps, t)
    pred = model(x_t, t, cond)
    target = schedule.target(pred.kind, x0, eps, t)
    return F.mse_loss(pred.native.float(), target.float())


def subinterval_denoising_loss(model: DiffusionModel, schedule: Schedule, x_s: Tensor, s: Tensor, t: Tensor,
                               cond: Cond | None = None, max_weight: float = 10.0) -> Tensor:
    """Score matching on samples known only at an intermediate time ``s`` (Phased DMD's fake-score loss,
    arXiv:2510.27684 eq. 13): x_t = alpha_{t|s} x_s + sigma_{t|s} eps, and the stable form
    ``clamp(1 / sigma_{t|s}^2, max=max_weight) * || sigma_{t|s} pred - sigma_{t|s} target ||^2`` with the unbiased
    target of schedule.subinterval_target (the naive target of plain denoising, e.g. eps - x_s for flow, is biased:
    x_s is not the clean sample). At s = 0 the target is the plain one. Shapes: x_s [B, ...]; s, t [B] with t > s."""
    eps = torch.randn_like(x_s)
    x_t = schedule.add_noise_from(x_s, eps, t, s)
    pred = model(x_t, t, cond)
    scaled_target, sigma_ts = schedule.subinterval_target(pred.kind, x_s, eps, t, s)
    shape = (-1, *([1] * (x_s.dim() - 1)))
    weight = (1.0 / sigma_ts.square().clamp_min(1e-12)).clamp(max=max_weight).reshape(shape)
    residual = sigma_ts.reshape(shape) * pred.native.double() - scaled_target.double()
    return (weight * residual.square()).mean().float()


def dmd_loss(x_gen: Tensor, real_x0: Tensor, fake_x0: Tensor,
             weight: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Distribution-matching surrogate (DMD, Yin et al. 2024 eq. 7; DMD2 sec. 4.1).

    With p_real = x_gen - real_x0 and p_fake = x_gen - fake_x0, the gradient direction is
    g = (p_real - p_fake) / mean|p_real| with the normaliser PER SAMPLE (DMD2's code; FastVideo's batch-global mean
    differs), NaNs zeroed. The loss 0.5 * MSE(x_gen, stopgrad(x_gen - g)) has d loss / d x_gen proportional to g:
    it moves x_gen toward the teacher's denoised estimate and away from the critic's. ``weight`` [B] scales each
    sample's direction (Phased DMD's sub-interval chain-rule factor 1 / alpha_s; None: 1). Shapes: all [B, ...].
    """
    with torch.no_grad():
        p_real, p_fake = (x_gen - real_x0).float(), (x_gen - fake_x0).float()
        dims = tuple(range(1, x_gen.dim()))
        norm = p_real.abs().mean(dim=dims, keepdim=True).clamp_min(1e-12)
        grad = torch.nan_to_num((p_real - p_fake) / norm)
        if weight is not None:
            grad = grad * weight.float().reshape(-1, *([1] * (x_gen.dim() - 1)))
        target = x_gen.float() - grad
    loss = 0.5 * F.mse_loss(x_gen.float(), target)
    return loss, {"dm_grad_norm": grad.flatten(1).norm(dim=1).mean()}


def gan_generator_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss softplus(-D(fake)) (Goodfellow et al. 2014; DMD2 sec. 4.3)."""
    return F.softplus(-fake_logits.float()).mean()


def gan_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """softplus(D(fake)) + softplus(-D(real)): the logistic discriminator loss."""
    return F.softplus(fake_logits.float()).mean() + F.softplus(-real_logits.float()).mean()


def finite_difference_penalty(logits: Tensor, perturbed_logits: Tensor) -> Tensor:
    """The finite-difference form of the R1 / R2 gradient penalty (Self Forcing's GAN, arXiv:2506.08009, sec. 3.4;
    APT, arXiv:2501.08316, its "approximated R1"): mean (D(x) - D(x + sigma eps))^2, about sigma^2 |grad_x D|^2, with no double
    backward (so it runs under FSDP and with fused attention)."""
    return (logits.float() - perturbed_logits.float()).square().mean()
