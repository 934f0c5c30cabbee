"""CLIP score: image-text cosine similarity under a CLIP model, with every protocol choice explicit.

There is no single standard (DMD2, arXiv:2405.14867, reports the raw cosine; torchmetrics x100 clamped): papers differ in model, scale, clamp, prompt prefix and
image preprocessing, and numbers are only comparable when all of them match. :class:`CLIPScoreConfig` names each
one; :meth:`CLIPScorer.protocol` records them next to the score.

| paper / tool (preset)          | model                                    | scale | max(., 0)   | prompt prefix      |
|--------------------------------|------------------------------------------|-------|-------------|--------------------|
| torchmetrics CLIPScore (torchmetrics) | openai/clip-vit-large-patch14 (ViT-L/14) | 100 | of the mean | none          |
| DMD2, SDXL COCO-10k (dmd2)     | OpenCLIP ViT-g-14 laion2b_s12b_b42k      | 1     | no          | "A photo depicts " |
| Hessel et al. 2021 (hessel)    | OpenAI ViT-B/32                          | 2.5   | per pair    | "A photo depicts " |

Notes on reproducing them:

* torchmetrics computes ``100 * cos`` per pair and clamps the **mean** at 0 (``max(mean, 0)``, torchmetrics 1.9
  ``clip_score``/``CLIPScore.compute``), although its docs write the clamp per sample. Its images go through the HF
  ``CLIPProcessor`` (shortest side to 224 with bicubic, centre crop, CLIP mean/std); captions longer than the model's
  77 positions are truncated.
* DMD2 reports the raw cosine (about 0.33 for SDXL-class models, not x100) with open_clip ViT-g-14, after centre
  cropping and LANCZOS-resizing the images to the evaluation resolution; open_clip then resizes to 224 (bicubic) and
  centre-crops. **open_clip is not a backend here**: it imports torchvision, which breaks the CPU-only stack
  (open_clip needs torchvision, which breaks CPU installs: README, Installing by hand). Use the transformers conversion of the same weights (the HF hub folder
  ``laion/CLIP-ViT-g-14-laion2B-s12B-b42K``, downloaded elsewhere) with the ``dmd2`` preset; the tokenizers and
  resize implementations differ slightly, so expect close, not bit-identical, numbers.
* Here images are resized in torch (bicubic, antialias, shortest side to the model's image size, then a centre
  crop), clamped to [0, 1] and normalised with the CLIP mean/std; prompts are truncated to 77 tokens (BOS and EOS
  kept).

transformers is imported lazily (the ``[diffusers]`` extra) and only in :func:`load_clip`. In transformers 5
``get_image_features``/``get_text_features`` return a ``BaseModelOutputWithPooling`` whose ``pooler_output`` holds
the *projected* embeddings (4.x returned the tensor): :func:`_embeddings` accepts both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .resize import ValueRange, as_image_batch

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
Clamp = Literal["mean", "sample", "none"]


@dataclass
class CLIPScoreConfig:
    """Every choice behind a CLIP score. ``model``: a local folder with a transformers ``CLIPModel`` and its
    tokenizer (``save_pretrained`` layout; nothing is fetched from the hub)."""

    model: str = ""
    backend: Literal["transformers", "open_clip"] = "transformers"
    scale: float = 100.0                 # 100: torchmetrics; 1: raw cosine (DMD2); 2.5: Hessel et al.
    clamp: Clamp = "mean"                # where max(., 0) applies: the mean (torchmetrics), each pair (Hessel), none
    prompt_prefix: str = ""              # prepended verbatim to every prompt, e.g. "A photo depicts "
    image_size: int | None = None        # None: the model's vision_config.image_size
    center_crop: bool = True             # shortest side to image_size, then crop (CLIP's own preprocessing)
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    max_tokens: int = 77                 # capped at the text model's positions
    batch_size: int = 64

    @classmethod
    def torchmetrics(cls, model: str, **overrides: Any) -> "CLIPScoreConfig":
        return cls(model=model, scale=100.0, clamp="mean", prompt_prefix="", **overrides)

    @classmethod
    def dmd2(cls, model: str, **overrides: Any) -> "CLIPScoreConfig":
        return cls(model=model, scale=1.0, clamp="none", prompt_prefix="A photo depicts ", **overrides)

    @classmethod
    def hessel(cls, model: str, **overrides: Any) -> "CLIPScoreConfig":
        return cls(model=model, scale=2.5, clamp="sample", prompt_prefix="A photo depicts ", **overrides)


@dataclass
class CLIPScoreResult:
    score: float             # the reported number: mean of per_sample, clamped as configured
    per_sample: Tensor       # [N] scale * cos(image_i, prompt_i), clamped per pair only when clamp == "sample"
    n: int


def load_clip(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """A transformers CLIPModel and tokenizer from a local folder (offline: ``local_files_only``)."""
    from transformers import AutoTokenizer, CLIPModel

    if not Path(path).is_dir():
        raise FileNotFoundError(f"CLIP model folder {path} not found; download the model (e.g. with "
                                "`huggingface-cli download openai/clip-vit-large-patch14 --local-dir DIR`) on a "
                                "machine with hub access and pass that folder")
    from ..files import reading_weights

    if not any(Path(path).glob("*.safetensors")):
        raise FileNotFoundError(f"CLIP model folder {path} holds no .safetensors weights; only safetensors are loaded "
                                "(pickled .bin files can run code). Convert it once on a trusted machine: "
                                "`CLIPModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)`")
    with reading_weights(path, "download the model again"):
        model = CLIPModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model, tokenizer


def combine(cosines: Tensor, scale: float, clamp: Clamp) -> CLIPScoreResult:
    """Apply a scale and clamp convention to per-pair cosines [N]."""
    if clamp not in ("mean", "sample", "none"):
        raise ValueError(f"clamp must be 'mean', 'sample' or 'none', got {clamp!r}")
    per_sample = scale * cosines.double()
    if clamp == "sample":
        per_sample = per_sample.clamp_min(0)
    score = float(per_sample.mean())
    return CLIPScoreResult(max(score, 0.0) if clamp == "mean" else score, per_sample, cosines.shape[0])


class CLIPScorer:
    """Scores images against prompts under a :class:`CLIPScoreConfig`. ``model``/``tokenizer`` skip loading
    (tests, or a model already in memory). Shapes: images [N, C, H, W], prompts N strings."""

    def __init__(self, config: CLIPScoreConfig, model: nn.Module | None = None, tokenizer: Any = None,
                 device: str | torch.device = "cpu") -> None:
        if config.backend == "open_clip":
            raise NotImplementedError(
                "the open_clip backend is not supported: open_clip imports torchvision, which breaks CPU-only "
                "installs; load the transformers conversion of the same weights (e.g. "
                "laion/CLIP-ViT-g-14-laion2B-s12B-b42K for DMD2's ViT-g-14) with backend='transformers'")
        if config.backend != "transformers":
            raise ValueError(f"unknown CLIP backend {config.backend!r}")
        if model is None:
            model, tokenizer = load_clip(config.model, device)
        if tokenizer is None:
            raise ValueError("a model passed in needs its tokenizer too")
        self.config, self.tokenizer = config, tokenizer
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        cfg = model.config
        self.image_size = config.image_size or cfg.vision_config.image_size
        self.max_tokens = min(config.max_tokens, cfg.text_config.max_position_embeddings)

    def protocol(self) -> dict[str, str]:
        import transformers

        fields = {k: str(v) for k, v in dataclasses.asdict(self.config).items()}
        return {**fields, "image_size": str(self.image_size), "max_tokens": str(self.max_tokens),
                "model_name": str(getattr(self.model.config, "_name_or_path", "")),
                "resize": "torch bicubic antialias, shortest side, centre crop" if self.config.center_crop
                else "torch bicubic antialias to a square", "transformers": transformers.__version__,
                "torch": torch.__version__}

    def preprocess(self, images: Tensor | Sequence[Tensor], value_range: ValueRange | None = None) -> Tensor:
        """Resize, crop and normalise for the vision tower. Shapes: [N, C, H, W] -> [N, 3, S, S]."""
        x = as_image_batch(images, value_range).to(self.device) / 255.0
        s = self.image_size
        h, w = x.shape[-2:]
        if self.config.center_crop:
            ratio = s / min(h, w)
            size = (max(s, round(h * ratio)), max(s, round(w * ratio)))
        else:
            size = (s, s)
        if (h, w) != size:
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
        top, left = (size[0] - s) // 2, (size[1] - s) // 2
        x = x[..., top:top + s, left:left + s].clamp(0, 1)      # bicubic overshoots; PIL's uint8 output clips too
        mean = torch.tensor(self.config.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.config.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def tokenize(self, prompts: Sequence[str]) -> dict[str, Tensor]:
        """Prefix, tokenize, pad to and truncate at ``max_tokens`` (the tokenizer keeps BOS and EOS)."""
        texts = [self.config.prompt_prefix + p for p in prompts]
        enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_tokens,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    @torch.no_grad()
    def image_embeddings(self, images: Tensor | Sequence[Tensor], value_range: ValueRange | None = None) -> Tensor:
        """Unit-norm projected image embeddings. Shapes: -> [N, E]."""
        out = self.model.get_image_features(pixel_values=self.preprocess(images, value_range))
        return F.normalize(projected_embeddings(out, self.model).float(), dim=-1)

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> Tensor:
        """Unit-norm projected text embeddings of the prefixed prompts. Shapes: -> [N, E]."""
        out = self.model.get_text_features(**self.tokenize(prompts))
        return F.normalize(projected_embeddings(out, self.model).float(), dim=-1)

    def cosines(self, images: Tensor | Sequence[Tensor], prompts: Sequence[str],
                value_range: ValueRange | None = None) -> Tensor:
        """cos(image_i, prompt_i) for each pair, in batches of ``config.batch_size``. Shapes: -> [N] (cpu)."""
        if isinstance(prompts, str):
            raise ValueError("prompts must be a list of strings, one per image, not a single string")
        n = len(images)
        if n != len(prompts):
            raise ValueError(f"{n} images but {len(prompts)} prompts; CLIP score needs one prompt per image")
        out = []
        for start in range(0, n, self.config.batch_size):
            end = start + self.config.batch_size
            img = self.image_embeddings(images[start:end], value_range)
            txt = self.text_embeddings(list(prompts[start:end]))
            out.append((img * txt).sum(-1).cpu())
        return torch.cat(out)

    def score(self, images: Tensor | Sequence[Tensor], prompts: Sequence[str],
              value_range: ValueRange | None = None) -> CLIPScoreResult:
        """The CLIP score of matched (image, prompt) pairs under the configured scale and clamp."""
        return combine(self.cosines(images, prompts, value_range), self.config.scale, self.config.clamp)


def projected_embeddings(output: Any, model: nn.Module) -> Tensor:
    """The projected embeddings from a ``get_*_features`` result: a tensor (transformers 4.x) or a ModelOutput
    (transformers 5: ``pooler_output`` is replaced by the projection; some models name it ``*_embeds``)."""
    if isinstance(output, Tensor):
        return output
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(output, name, None)
        if isinstance(value, Tensor):
            break
    else:
        raise TypeError(f"cannot find embeddings in a {type(output).__name__} (fields: {list(output.keys())})")
    width = getattr(model.config, "projection_dim", None)
    if width is not None and value.shape[-1] != width:
        raise TypeError(f"{type(output).__name__}.{name} has width {value.shape[-1]}, not the projection width "
                        f"{width}: this transformers version returns unprojected pooled states; please report it")
    return value
