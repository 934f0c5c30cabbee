"""Reward models for feedback learning (ReFL, Xu et al., arXiv:2304.05977; Hyper-SD's feedback stage,
arXiv:2404.13686 sec. 3.2): a differentiable score of a predicted clean sample and its condition, [B], higher is
better. Loaded from local files only (no model hub on our machines):

* ``fmnist_classifier``: log p(conditioning class | x0) under a Fashion-MNIST classifier (metrics/fmnist.py layout;
  default the shipped evaluator's, but a classifier trained apart keeps the benchmark's class accuracy honest:
  optimising against the scorer that grades you measures reward hacking, not quality).
* ``clip_aesthetic``: a LAION-style aesthetic predictor on CLIP image embeddings, for SD / SDXL latents: the
  pipeline's VAE decodes x0 (models/pipeline_encoder.py), CLIP's image tower embeds the (resized, normalised)
  image, a stack of linear layers (the LAION predictor's: no activations) maps the L2-normalised embedding to a
  score. Folder layout: ``clip/`` (a transformers ``CLIPModel`` folder, safetensors, loaded by
  metrics/clip_score.load_clip) and ``head.safetensors`` (``<i>.weight``, ``<i>.bias`` per linear layer, in order). An ImageReward-style text-image scorer fits the same ``Reward``
  interface (forward(x0, cond) -> [B]).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..files import load_safetensors
from ..metrics.clip_score import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, projected_embeddings
from .base import Cond



@dataclass
class RewardConfig:
    kind: Literal["fmnist_classifier", "clip_aesthetic"] = "fmnist_classifier"
    path: str | None = None        # classifier: a .safetensors file or a folder holding classifier.safetensors
                                   # (default: the shipped evaluator's); clip_aesthetic: the folder described above
    pipeline: str | None = None    # clip_aesthetic on latents: the diffusers pipeline folder whose VAE decodes x0


class Reward(nn.Module):
    """forward(x0 [B, ...], cond) -> reward [B] (float32), differentiable in x0; its own weights are frozen."""

    def forward(self, x0: Tensor, cond: Cond) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class ClassifierReward(Reward):
    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__()
        from ..metrics.fmnist import ASSETS, CLASSIFIER_FILE, FMNISTClassifier

        file = Path(path) if path else ASSETS / CLASSIFIER_FILE
        if file.is_dir():
            file = file / CLASSIFIER_FILE
        if not file.is_file():
            raise FileNotFoundError(f"reward.path: {str(file)!r} does not exist; give a Fashion-MNIST classifier "
                                    "(.safetensors, evaluation/fmnist/train_classifier.py writes one) or drop the key "
                                    "for the shipped evaluator's")
        self.net = FMNISTClassifier()
        self.net.load_state_dict(load_safetensors(file, "retrain it with evaluation/fmnist/train_classifier.py"))
        self.net.requires_grad_(False).eval()

    def forward(self, x0: Tensor, cond: Cond) -> Tensor:
        if cond.labels is None:
            raise ValueError("the classifier reward scores the conditioning class: the data must carry labels")
        self.net.eval()              # BatchNorm statistics stay the trained ones
        # the evaluator clamps samples to [-1, 1] (metrics/fmnist.py): pixels beyond it earn no reward here either
        logp = F.log_softmax(self.net(x0.float().clamp(-1.0, 1.0)), dim=1)
        return logp.gather(1, cond.labels.long().reshape(-1, 1).to(logp.device)).squeeze(1)


class CLIPAestheticReward(Reward):
    def __init__(self, folder: str | Path, pipeline: str | Path | None = None) -> None:
        super().__init__()
        from ..metrics.clip_score import load_clip
        from .pipeline_encoder import PipelineEncoder

        folder = Path(folder)
        for need in (folder / "clip", folder / "head.safetensors"):
            if not need.exists():
                raise FileNotFoundError(f"reward.path: {str(need)!r} is missing; a clip_aesthetic reward folder holds "
                                        "clip/ (a transformers CLIPModel folder, safetensors) and head.safetensors "
                                        "(the predictor's linear layers)")
        self.clip = load_clip(folder / "clip")[0].requires_grad_(False)
        head = load_safetensors(folder / "head.safetensors")
        layers = []
        for i in range(len({k.split(".")[0] for k in head})):
            weight = head[f"{i}.weight"]
            layer = nn.Linear(weight.shape[1], weight.shape[0])
            layer.load_state_dict({"weight": weight, "bias": head[f"{i}.bias"]})
            layers.append(layer)
        self.head = nn.Sequential(*layers).requires_grad_(False)
        encoder = PipelineEncoder(pipeline) if pipeline is not None else None
        if encoder is not None:
            encoder.pipe.vae.requires_grad_(False)
            self.vae = encoder.pipe.vae                # a submodule: moves with the reward
        self.decode = encoder.decode_images if encoder is not None else None
        size = self.clip.config.vision_config.image_size
        self.size = (size, size)
        self.register_buffer("mean", torch.tensor(OPENAI_CLIP_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_CLIP_STD).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, x0: Tensor, cond: Cond) -> Tensor:
        images = self.decode(x0) if self.decode is not None else x0.float()
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"the aesthetic reward scores RGB images [B, 3, H, W] (set reward.pipeline to decode "
                             f"latents), got {list(images.shape)}")
        pixels = F.interpolate((images.clamp(-1, 1) + 1) / 2, size=self.size, mode="bicubic", align_corners=False)
        features = projected_embeddings(self.clip.get_image_features(pixel_values=(pixels - self.mean) / self.std),
                                        self.clip)
        return self.head(F.normalize(features, dim=-1)).squeeze(-1)


def build_reward(cfg: RewardConfig) -> Reward:
    if cfg.kind == "fmnist_classifier":
        return ClassifierReward(cfg.path)
    if cfg.kind == "clip_aesthetic":
        if not cfg.path:
            raise ValueError("reward.kind clip_aesthetic needs reward.path: the folder with clip/ and head.safetensors")
        return CLIPAestheticReward(cfg.path, cfg.pipeline)
    raise ValueError(f"unknown reward.kind {cfg.kind!r}; choose fmnist_classifier or clip_aesthetic")
