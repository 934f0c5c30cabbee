"""Learned class tokens: class conditioning of a cross-attention network through its text stream.

A class label becomes ``tokens`` learned vectors of the network's text width, passed as ``encoder_hidden_states``
where a prompt embedding would go, so a diffusers ``UNet2DConditionModel`` (B1) or ``WanTransformer3DModel`` (B2)
is class-conditioned without changing its class. Row ``num_classes`` is the null class (CFG's unconditional input).
A clip with several sprites (labels [B, S]) gets the tokens of each label in turn: [B, S * tokens, width].
Exports keep the table as ``class_tokens.safetensors`` beside the diffusers folders.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ..config import ConfigError
from ..files import load_safetensors
from .base import NULL_LABEL

CLASS_TOKENS = "class_tokens.safetensors"


def make_class_embed(num_classes: int, tokens: int, width: int | None, dtype: torch.dtype,
                     root: Path | None, hint: str) -> nn.Embedding | None:
    """The class-token table (None when ``num_classes`` is 0), loaded from ``root``'s export when it has one."""
    saved = root / CLASS_TOKENS if root is not None else None
    if num_classes <= 0:
        if saved is not None and saved.is_file():
            raise ConfigError(f"{saved} holds learned class tokens but num_classes=0; set model.num_classes")
        return None
    if width is None:
        raise ConfigError("class tokens need a single text width (cross_attention_dim / text_dim)")
    embed = nn.Embedding(num_classes + 1, tokens * width).to(dtype)
    if saved is not None and saved.is_file():
        embed.load_state_dict(load_safetensors(saved, hint))
    return embed


def class_context(embed: nn.Embedding, labels: Tensor | None, num_classes: int, tokens: int, width: int,
                  batch: int) -> Tensor:
    """encoder_hidden_states [B, S * tokens, width] for labels [B] or [B, S] (absent: the null class)."""
    if labels is None:
        labels = torch.full((batch,), NULL_LABEL)
    if labels.dim() not in (1, 2) or labels.shape[0] != batch:
        raise ValueError(f"cond.labels must be [B] or [B, S] with B={batch}, got {list(labels.shape)}")
    if bool(((labels < NULL_LABEL) | (labels >= num_classes)).any()):
        raise ValueError(f"cond.labels must be in 0..{num_classes - 1} or NULL_LABEL={NULL_LABEL}, got "
                         f"{labels.tolist()}")
    idx = torch.where(labels == NULL_LABEL, num_classes, labels).long().to(embed.weight.device)
    return embed(idx).reshape(batch, -1, width)


def save_class_tokens(embed: nn.Embedding, directory: str | Path) -> None:
    save_file({"weight": embed.weight.detach().cpu().contiguous()}, Path(directory) / CLASS_TOKENS)
