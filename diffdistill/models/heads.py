"""Discriminator heads on a critic's intermediate features (DMD2 sec. 4.3; SDXL-Lightning's discriminator idea).

DMD2 classifies the fake UNet's mid-block output with three [4x4 conv stride 2 -> GroupNorm -> SiLU] blocks and a
final conv to one logit, so the GAN shares the critic's encoder (the encoder also learns from the GAN loss).
:func:`attach_head` hooks such a head onto any wrapped model: its ordinary forward then also fills
``pred.logits``, so no mode flag is needed in ``forward`` and a DDP wrapper sees one plain forward.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .base import Cond, DiffusionModel


@dataclass
class FeatureSpec:
    """Where a model's discriminator features come from: a submodule name, its channels, spatial (4-D), flat
    ([B, C]) or a token sequence ([B, L, C]: a transformer's hidden states)."""

    module: str
    channels: int
    spatial: bool
    tokens: bool = False


class GANHead(nn.Module):
    """Features -> one logit per sample. Spatial [B, C, h, w]: stride-2 conv blocks down to <= 4x4, then a conv to
    one channel averaged over positions; flat [B, C]: a two-layer MLP; tokens [B, L, C]: a normalised two-layer MLP
    per token, its logits averaged over the tokens (a patch discriminator on a transformer's hidden states).
    Shapes: -> [B]."""

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        self.spec = spec
        width = spec.channels          # same width throughout, so stopping the downsampling early is always valid
        if spec.spatial:
            groups = next(g for g in (32, 16, 8, 4, 2, 1) if width % g == 0)
            self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(width, width, 4, 2, 1),
                                                       nn.GroupNorm(groups, width), nn.SiLU()) for i in range(3)])
            self.out = nn.Conv2d(width, 1, 1)
        elif spec.tokens:
            self.blocks = nn.ModuleList([nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU())])
            self.out = nn.Linear(width, 1)
        else:
            self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(spec.channels, width), nn.SiLU())])
            self.out = nn.Linear(width, 1)

    def forward(self, features: Tensor) -> Tensor:
        h = features.float()
        for block in self.blocks:
            if self.spec.spatial and min(h.shape[-2:]) <= 4:
                break           # small feature maps (tiny models, low resolutions) stop downsampling early
            h = block(h)
        logits = self.out(h)
        return logits.flatten(1).mean(1)


def attach_head(model: DiffusionModel) -> GANHead:
    """Give ``model`` a discriminator head on its ``feature_spec()`` features; returns the head (now a submodule).

    After this, ``model(x_t, t, cond).logits`` holds the head's logits [B] for that forward pass.
    """
    spec = model.feature_spec()
    head = GANHead(spec)
    model.gan_head = head
    model.get_submodule(spec.module).register_forward_hook(_keep_features)
    return head


def _keep_features(module: nn.Module, inputs: tuple, output: Tensor | tuple) -> None:
    module._gan_features = output[0] if isinstance(output, tuple) else output


def generator_logits(critic: DiffusionModel, x_t: Tensor, t: Tensor, cond: Cond | None) -> Tensor:
    """The discriminator's logits [B] on ``x_t`` for a GENERATOR loss (the gradient flows to ``x_t``).

    ``critic`` must be the unwrapped network (``Method.role("critic")``): through its DDP wrapper, a forward whose
    loss reads only the logits would leave the wrapper waiting for gradients of the output layers. During a student
    phase the trainer keeps the critic's weights frozen (train/trainer.py ``_only_trainable``), so no gradient reaches
    them either."""
    logits = critic(x_t, t, cond).logits
    if logits is None:
        raise ValueError(f"{type(critic).__name__} has no discriminator head: attach_head(critic) first")
    return logits
