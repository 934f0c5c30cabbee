"""A diffusers pipeline's VAE and text encoders without its denoiser: ``diffdistill encode`` (data/encode.py) and
prompted sampling (inference/side_by_side.PromptConditioner) go through it, so training data, sampling and decoding
use exactly what the teacher was trained with.

* SD1.5 / SDXL: image latents = (VAE latents - ``shift_factor``) x ``scaling_factor``; SDXL's two text encoders
  give ``text`` [B, 77, 2048] and ``pooled`` [B, 1280].
* Wan 2.1 / 2.2: video latents = (VAE latents - ``latents_mean``) / ``latents_std`` per channel (the inverse of
  WanPipeline's decoding, diffusers pipelines/wan/pipeline_wan.py) in the toolkit's video layout [B, T', C, h, w],
  where T' = (T - 1) / 4 + 1 for the VAE's 4x temporal compression; umT5 gives ``text`` [B, 512, D], zero-padded
  past each prompt, as WanPipeline encodes it.

The unconditional condition follows each pipeline: zeros where it sets ``force_zeros_for_empty_prompt`` (SDXL), else
the encoded empty prompt (SD1.5, Wan's default negative prompt '').
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from ..files import reading_weights

DENOISERS = ("unet", "transformer", "transformer_2")     # not loaded: the encoder needs the VAE and text encoders only
WAN_MAX_SEQUENCE_LENGTH = 512                            # WanPipeline.__call__'s default


def read_model_index(folder: str | Path) -> dict:
    """A pipeline folder's model_index.json (its pipeline class and components), or a one-line error."""
    index = Path(folder).expanduser() / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"--pipeline {str(folder)!r} is not a diffusers pipeline folder (no model_index.json)"
                                "; download one first, e.g. `hf download stabilityai/stable-diffusion-xl-base-1.0 "
                                "--local-dir models/sdxl-base`")
    return json.loads(index.read_text())


def is_video_pipeline(index: dict) -> bool:
    """Wan pipelines (WanPipeline, WanImageToVideoPipeline, ...) encode clips; the others images."""
    return str(index.get("_class_name", "")).startswith("Wan")


class PipelineEncoder:
    """Text encoding, VAE encoding of images or videos, and decoding, for one pipeline folder."""

    def __init__(self, folder: str | Path, device: str = "cpu", vae_dtype: torch.dtype = torch.float32) -> None:
        from diffusers import DiffusionPipeline

        self.folder, self.device = Path(folder).expanduser(), device
        components = read_model_index(self.folder)
        skip = {name: None for name in DENOISERS if name in components}
        with reading_weights(self.folder, "re-download the pipeline"):
            self.pipe = DiffusionPipeline.from_pretrained(self.folder, local_files_only=True, use_safetensors=True,
                                                          **skip)
        self.pipe.vae.to(device, vae_dtype)
        for name in ("text_encoder", "text_encoder_2"):
            if getattr(self.pipe, name, None) is not None:
                getattr(self.pipe, name).to(device)
        self.sdxl = getattr(self.pipe, "text_encoder_2", None) is not None
        self.video = is_video_pipeline(components)
        config = self.pipe.vae.config
        if self.video:
            self.latents_mean = torch.tensor(config.latents_mean).view(1, 1, -1, 1, 1)
            self.latents_std = torch.tensor(config.latents_std).view(1, 1, -1, 1, 1)
            self.scaling_factor = 1.0
        else:
            self.scaling_factor = float(config.scaling_factor)

    def default_resolution(self) -> int:
        """The UNet's sample size in pixels (read from ``unet/config.json``)."""
        config = self.folder / "unet" / "config.json"
        if not config.is_file():
            raise ValueError("pass --resolution (the pipeline folder has no unet/config.json to read it from)")
        return int(json.loads(config.read_text())["sample_size"]) * self.pipe.vae_scale_factor

    @torch.no_grad()
    def text(self, prompts: list[str]) -> dict[str, Tensor]:
        if self.video:
            text, _ = self.pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=self.device,
                                              max_sequence_length=WAN_MAX_SEQUENCE_LENGTH)
            return {"text": text.float().cpu()}
        if self.sdxl:
            text, _, pooled, _ = self.pipe.encode_prompt(prompts, device=self.device, num_images_per_prompt=1,
                                                         do_classifier_free_guidance=False)
            return {"text": text.float().cpu(), "pooled": pooled.float().cpu()}
        text, _ = self.pipe.encode_prompt(prompts, self.device, 1, False)
        return {"text": text.float().cpu()}

    def null(self) -> dict[str, Tensor]:
        empty = self.text([""])
        if getattr(self.pipe.config, "force_zeros_for_empty_prompt", False):
            return {k: torch.zeros_like(v) for k, v in empty.items()}
        return empty

    @torch.no_grad()
    def images(self, pixels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """[B, 3, H, W] in [-1, 1] -> scaled latents [B, C, H / f, W / f] (a sample of the VAE posterior)."""
        if self.video:
            raise ValueError(f"{self.folder} is a video pipeline: encode clips (videos), not images")
        vae = self.pipe.vae
        latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.sample(generator=generator).float()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * self.scaling_factor).cpu()

    @torch.no_grad()
    def videos(self, pixels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Clips [B, T, 3, H, W] in [-1, 1] (T = 4k + 1) -> normalised latents [B, (T - 1) / 4 + 1, C, H / 8, W / 8]
        (a sample of the VAE posterior)."""
        if not self.video:
            raise ValueError(f"{self.folder} is an image pipeline: encode images, not clips")
        if pixels.dim() != 5 or (pixels.shape[1] - 1) % 4:
            raise ValueError(f"the Wan VAE encodes clips [B, T, 3, H, W] with T = 4k + 1 frames (1, 5, 9, ..., 81), "
                             f"got {list(pixels.shape)}")
        vae = self.pipe.vae
        latents = vae.encode(pixels.permute(0, 2, 1, 3, 4).to(vae.device, vae.dtype)).latent_dist.sample(
            generator=generator).float().cpu().permute(0, 2, 1, 3, 4)
        return (latents - self.latents_mean) / self.latents_std

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """The inverse of :meth:`images` / :meth:`videos`: latents -> pixels in [-1, 1] ([B, 3, H, W] or
        [B, T, 3, H, W])."""
        vae = self.pipe.vae
        if self.video:
            z = (latents.cpu().float() * self.latents_std + self.latents_mean).permute(0, 2, 1, 3, 4)
            return vae.decode(z.to(vae.device, vae.dtype)).sample.float().permute(0, 2, 1, 3, 4).clamp(-1, 1).cpu()
        return self.decode_images(latents).clamp(-1, 1)

    def decode_images(self, latents: Tensor) -> Tensor:
        """Image latents [B, 4, h, w] -> pixels [B, 3, H, W] (about [-1, 1], not clamped) WITH gradients: a reward
        on decoded samples trains the student through the VAE (ReFL, models/reward.py)."""
        vae = self.pipe.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        z = latents / self.scaling_factor + shift
        return vae.decode(z.to(vae.device, vae.dtype)).sample.float()
