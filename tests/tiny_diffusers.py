"""Tiny random-weight diffusers models and pipelines for tests, built from configs (no downloads).

The configs follow diffusers' own test configs (diffusers' tests/models/*/test_models_*.py); the CLIP and T5
tokenizers are built from in-memory vocabularies (transformers 5), so nothing touches the model hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def tiny_sd15_unet_config() -> dict[str, Any]:
    """SD1.5-shaped UNet (cross-attention on text, no added embeddings): 4x16x16 latents, text width 32."""
    return dict(block_out_channels=[16, 32], layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
                down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], cross_attention_dim=32, attention_head_dim=4,
                norm_num_groups=8)


def tiny_sdxl_unet_config() -> dict[str, Any]:
    """SDXL-shaped UNet: text_time added embeddings (6 time ids x 8 + 32 pooled = 80), text width 64 = 32 + 32."""
    return dict(block_out_channels=[32, 64], layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
                down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], attention_head_dim=[2, 4],
                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                transformer_layers_per_block=[1, 2], projection_class_embeddings_input_dim=80,
                cross_attention_dim=64, norm_num_groups=1)


def tiny_wan_config() -> dict[str, Any]:
    """Wan-shaped transformer: 16 latent channels, patch (1, 2, 2), text width 32."""
    return dict(patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
                text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def sd_scheduler(prediction_type: str = "epsilon"):
    """SD's scheduler config (scaled-linear betas 0.00085..0.012), as SD/SDXL pipelines ship it (Euler, leading)."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                  timestep_spacing="leading", prediction_type=prediction_type)


def save_model_folder(folder: str | Path, network, scheduler, subfolder: str) -> Path:
    """A pipeline-like folder holding only ``<subfolder>/`` and ``scheduler/`` (all the adapters read)."""
    folder = Path(folder)
    network.save_pretrained(folder / subfolder, safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    return folder


def tiny_unet(config: dict[str, Any], seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**config).eval()


def tiny_wan(seed: int = 0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**tiny_wan_config()).eval()


# ---------------------------------------------------------------------- tokenizers (built offline: no hub on the build machines)
def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte alphabet (printable stand-ins for the 256 byte values)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_clip_tokenizer(model_max_length: int = 77):
    """Character-level CLIP BPE tokenizer with no merges (514 entries)."""
    from transformers import CLIPTokenizer

    chars = _bytes_to_unicode()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in chars:
            vocab[c + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def tiny_t5_tokenizer():
    """Unigram T5 tokenizer from an in-memory (piece, score) list."""
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>", "▁"] + list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-")
    pieces += ["▁" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    scores = [0.0 if i < 3 else (-1.0 if p.startswith("▁") and len(p) > 1 else -5.0) for i, p in enumerate(pieces)]
    return T5Tokenizer(vocab=list(zip(pieces, scores)), extra_ids=0)


# ---------------------------------------------------------------------- pipelines
def _tiny_vae():
    """AutoencoderKL with SD's layout (4 latent channels, 2x downsampling here)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         norm_num_groups=32, sample_size=64)


def _tiny_clip_config(vocab_size: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
                          layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=5, vocab_size=vocab_size,
                          hidden_act="gelu", projection_dim=32)


def tiny_sdxl_pipeline(seed: int = 0):
    """StableDiffusionXLPipeline with tiny random UNet, VAE and two CLIP text encoders (32 + 32 = 64 wide)."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = tiny_unet(tiny_sdxl_unet_config(), seed)
    tok = tiny_clip_tokenizer()
    tcfg = _tiny_clip_config(len(tok))
    pipe = StableDiffusionXLPipeline(vae=_tiny_vae(), text_encoder=CLIPTextModel(tcfg),
                                     text_encoder_2=CLIPTextModelWithProjection(tcfg), tokenizer=tok, tokenizer_2=tok,
                                     unet=unet, scheduler=sd_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd15_pipeline(seed: int = 0):
    """StableDiffusionPipeline with a tiny random UNet (text width 32), VAE and CLIP text encoder."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tok = tiny_clip_tokenizer()
    pipe = StableDiffusionPipeline(vae=_tiny_vae(), text_encoder=CLIPTextModel(_tiny_clip_config(len(tok))),
                                   tokenizer=tok, unet=tiny_unet(tiny_sd15_unet_config(), seed),
                                   scheduler=sd_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_wan_pipeline(shift: float = 7.0, seed: int = 0):
    """WanPipeline with a tiny random transformer, Wan VAE and umT5 encoder (text width 32)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline
    from transformers import T5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    transformer = tiny_wan(seed)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    tok = tiny_t5_tokenizer()
    encoder = UMT5EncoderModel(T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                        decoder_start_token_id=0))
    pipe = WanPipeline(tokenizer=tok, text_encoder=encoder, vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=shift))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_pipeline(pipe, folder: str | Path) -> Path:
    """``pipe.save_pretrained`` with safetensors: the folder layout a user points ``pretrained`` at."""
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def export_text_model(pipeline: str | Path, folder: str | Path, sampling: dict[str, Any] | None = None) -> Path:
    """An exported text-to-image model, as ``diffdistill export`` writes it: the pipeline's UNet under a distilled
    one-step student's sampling meta unless ``sampling`` says otherwise (no training run needed)."""
    from diffdistill.models.registry import build_model, save_model

    sampling = sampling or {"sampler": "few_step", "steps": 1, "times": [1.0], "guidance": 1.0, "num_classes": 0}
    unet = build_model({"kind": "unet", "pretrained": str(pipeline)})
    return save_model(unet, folder, {"sampling": sampling})


def tiny_clip_model(vocab_size: int, seed: int = 0):
    """A random CLIPModel (32 x 32 images, 16-d projections) for CLIP-score tests; pair it with
    :func:`tiny_clip_tokenizer`."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    cfg = CLIPConfig(text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=37,
                                      num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77,
                                      bos_token_id=0, eos_token_id=1, pad_token_id=1),
                     vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                        num_hidden_layers=2, image_size=32, patch_size=8), projection_dim=16)
    return CLIPModel(cfg)


def assert_merged_midway(half, base, full) -> None:
    """A LoRA merged at weight 0.5 is the mean of the base and the fully merged network, parameter by parameter (the
    update is linear in the scale), and it moved some of them."""
    moved = 0
    for name, p in half.named_parameters():
        want = (base.get_parameter(name) + full.get_parameter(name)) / 2
        torch.testing.assert_close(p, want, rtol=1e-5, atol=1e-6)
        moved += int(not torch.equal(p, base.get_parameter(name)))
    assert moved > 0
