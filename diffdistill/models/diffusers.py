"""Adapters from diffusers networks to the model contract: ``UNet2DConditionModel`` and ``WanTransformer3DModel``.

* :class:`DiffusersUNet` (registry kind ``unet``): SD1.5 / SD2 / SDXL UNets (SDXL's added text-time ids included),
  and small UNets trained here (the Fashion-MNIST teacher, conditioned through learned class tokens).
* :class:`DiffusersWan` (registry kind ``wan``): Wan 2.1 / 2.2 video transformers, rectified flow.

A network comes from ``pretrained`` (a diffusers pipeline folder, or a bare model folder) or from ``config`` (random
weights: tiny test models, new teachers). The adapter maps our continuous ``t`` to the network's timestep through
``schedule.model_time`` and reads scheduler configs through ``Schedule.from_diffusers_config``: no schedule maths here.
Exports keep the diffusers layout (``unet/`` or ``transformer/`` plus ``scheduler/``) so diffusers loads them as-is.

diffusers (and peft) are imported inside functions only: importing this module must work without them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..config import ConfigError
from ..files import reading_weights
from ..schedule import TCD_ORIGINAL_STEPS, Kind, Schedule
from .base import Cond, DiffusionModel
from .causal import BlockCausal, KVCache
from .class_tokens import class_context, make_class_embed, save_class_tokens
from .toy import ScheduleConfig

Dtype = Literal["float32", "bfloat16", "float16"]
# sdpa: diffusers' own processors, which call torch's scaled_dot_product_attention (flash / memory-efficient kernels
# where the device has them); xformers: its memory-efficient kernels (the [gpu] extra, CUDA only)
Attention = Literal["sdpa", "xformers"]
SCHEDULER_CONFIG = "scheduler_config.json"
COMFYUI_LORA = "comfyui_lora.safetensors"   # the LoRA in the kohya key layout (models/diffusers.kohya_lora)
_FROM_DIFFUSERS: dict[str, Kind] = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "flow"}
_TO_DIFFUSERS = {kind: name for name, kind in _FROM_DIFFUSERS.items()}
_REEXPORT_HINT = ("re-download the model, or for an export of ours rerun `diffdistill export RUN` (it rewrites export/ "
                  "from the run's newest intact checkpoint)")


@dataclass
class RuntimeSwitches:
    """Per-role precision and memory settings of a diffusers network (not part of its architecture: exports reset
    them). ``dtype``: the weights' precision; ``attention``: the attention backend; ``gradient_checkpointing`` and
    ``compile`` (``torch.compile``, in place) through diffusers' and torch's own switches."""

    dtype: Dtype = "float32"
    gradient_checkpointing: bool = False
    attention: Attention = "sdpa"
    compile: bool = False


@dataclass
class UNetConfig(RuntimeSwitches):
    """A diffusers ``UNet2DConditionModel`` teacher/student (SD1.5, SD2, SDXL, or a small UNet trained here).

    Exactly one of ``pretrained`` (pipeline folder with ``unet/`` + ``scheduler/``, or a bare UNet folder) and
    ``config`` (``UNet2DConditionModel(**config)``, random weights) is set. ``prediction`` defaults to the scheduler
    config's ``prediction_type`` (else eps); ``schedule`` to the folder's scheduler config (else SD's scaled-linear
    table). ``num_classes`` > 0 adds learned class tokens (``class_tokens`` of them, +1 null class for CFG) used as
    ``encoder_hidden_states`` when ``cond.labels`` is given.
    """

    pretrained: str | None = None
    subfolder: str | None = "unet"
    config: dict[str, Any] | None = None
    prediction: Literal["eps", "v", "x0", "flow"] | None = None
    schedule: ScheduleConfig | None = None
    num_classes: int = 0
    class_tokens: int = 1


@dataclass
class WanConfig(RuntimeSwitches):
    """A diffusers ``WanTransformer3DModel`` (Wan 2.1 / 2.2), rectified flow (it predicts ``eps - x0``).

    ``pretrained`` (pipeline folder with ``transformer/`` + ``scheduler/``, or a bare folder) or ``config``, as for
    :class:`UNetConfig`. ``schedule`` defaults to the folder's scheduler (its flow shift), else ``flow(shift=5)``.
    ``num_frames``, ``height``, ``width`` are the default LATENT size samplers draw noise for. ``num_classes`` > 0
    conditions it on classes through learned tokens in its text stream, as :class:`UNetConfig` does.
    ``chunk_frames`` > 0 makes it block-causal (the student of causal video distillation; models/causal.py), with a
    KV cache for streaming through :meth:`DiffusersWan.streaming`.
    """

    pretrained: str | None = None
    subfolder: str | None = "transformer"
    config: dict[str, Any] | None = None
    schedule: ScheduleConfig | None = None
    num_frames: int | None = None   # None: an export of ours gives its own (diffdistill.json), else 9
    height: int | None = None       # None: the export's, else 16
    width: int | None = None        # None: the export's, else 16
    num_classes: int = 0          # > 0: learned class tokens as encoder_hidden_states (models/class_tokens.py)
    class_tokens: int = 1
    chunk_frames: int = 0         # > 0: block-causal in chunks of this many latent frames (models/causal.py)
    window_chunks: int = 0        # causal only: attend to at most this many chunks (own included); 0 = all


class _DiffusersAdapter(DiffusionModel):
    """What both adapters share: loading, schedule resolution, LoRA targets, diffusers-layout export."""

    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")     # attention projections (names shared by UNet and Wan)
    lora_pipeline_class: str        # the diffusers pipeline whose save_lora_weights writes our adapters
    lora_prefix: str                # its keyword for this network ("unet" / "transformer")
    registry_kind: str
    network_class: str
    default_subfolder: str

    def _load(self, cfg: UNetConfig | WanConfig, fallback: ScheduleConfig) -> tuple[nn.Module, dict | None, Path | None]:
        """Build or load the network and resolve the schedule; returns (network, scheduler config, folder)."""
        import diffusers

        cls = getattr(diffusers, self.network_class)
        what = f"model (kind={self.registry_kind})"
        self.cfg, self.torch_dtype = cfg, getattr(torch, cfg.dtype)
        if (cfg.pretrained is None) == (cfg.config is None):
            raise ConfigError(f"{what}: set exactly one of `pretrained` (a diffusers folder) or `config` (a "
                              f"{self.network_class} config dict); got {'both' if cfg.config else 'neither'}")
        network, scheduler, root = None, None, None
        if cfg.config is not None:
            # a pasted config.json carries _class_name/_diffusers_version; anything else unknown is a TypeError
            network = _cast(cls(**{k: v for k, v in cfg.config.items() if not k.startswith("_")}), self.torch_dtype)
        else:
            root, sub, scheduler = _locate(Path(cfg.pretrained).expanduser(), self._export_subfolder, what)
            with reading_weights(root / (sub or ""), _REEXPORT_HINT):
                network = cls.from_pretrained(root, subfolder=sub, local_files_only=True, use_safetensors=True,
                                              torch_dtype=self.torch_dtype)
        _memory_switches(network, cfg)
        # the schedule we write on export: the explicit one, the folder's (when a ScheduleConfig can say it), or the
        # fallback; None means "not representable" (e.g. trained_betas) and the source config is copied verbatim
        self._scheduler_source = scheduler
        if cfg.schedule is not None:
            self.schedule, self.schedule_cfg = cfg.schedule.build(), cfg.schedule
        elif scheduler is not None:
            self.schedule = Schedule.from_diffusers_config(scheduler)
            self.schedule_cfg = _as_schedule_config(self.schedule, scheduler)
        else:
            self.schedule, self.schedule_cfg = fallback.build(), fallback
        return network, scheduler, root

    # learned class tokens (models/class_tokens.py) when num_classes > 0; each adapter sets both in __init__ (a class
    # attribute default would shadow the submodule nn.Module registers)
    class_embed: nn.Embedding | None
    text_width: int | None
    _text_null_help: str

    def _context(self, cond: Cond, batch: int) -> Tensor:
        """encoder_hidden_states [B, L, D]: the text embedding, or the class tokens of ``cond.labels``."""
        name = type(self).__name__
        if cond.labels is not None or (cond.text is None and self.class_embed is not None):
            if self.class_embed is None:
                raise ValueError(f"cond.labels given but this {name} has no class tokens (model.num_classes = 0): "
                                 "it is conditioned on text")
            if cond.text is not None:
                raise ValueError(f"got both cond.text and cond.labels; a {name} is conditioned on one of them")
            return class_context(self.class_embed, cond.labels, self.cfg.num_classes, self.cfg.class_tokens,
                                 self.text_width, batch)
        _expect("cond.text", cond.text, (batch, None, self.text_width), "[B, L, D] (the prompt embedding)")
        return cond.text.to(self.torch_dtype)

    def null_cond(self, cond: Cond) -> Cond:
        """Labels -> NULL_LABEL; no labels on a class-token model is already unconditional; text needs ``uncond``."""
        if cond.labels is not None:
            return super().null_cond(cond)
        if cond.text is None and self.class_embed is not None:
            return cond
        raise ValueError(self._text_null_help)

    def lora_network(self) -> nn.Module:
        return self.network

    def save_pretrained(self, directory: str | Path, sampling: dict[str, Any] | None = None) -> None:
        """Write ``<subfolder>/`` (safetensors) and ``scheduler/scheduler_config.json`` in the diffusers layout.

        ``class_tokens.safetensors`` holds learned class tokens when the model has them.
        LoRA layers injected by ``role_copy`` are merged into a copy first, so plain diffusers loads the export; the
        adapters alone are also written as ``pytorch_lora_weights.safetensors`` for ``pipe.load_lora_weights`` on
        the base model. ``sampling`` (a method's ``sampling_spec().to_dict()``) picks the scheduler a student needs.
        """
        import diffusers

        directory = Path(directory)
        _merged(self.network).save_pretrained(directory / self._export_subfolder, safe_serialization=True)
        (directory / "scheduler").mkdir(parents=True, exist_ok=True)
        sched = {**self._scheduler_export(sampling or {}), "_diffusers_version": diffusers.__version__}
        (directory / "scheduler" / SCHEDULER_CONFIG).write_text(json.dumps(sched, indent=2))
        self._save_lora(directory)
        if self.class_embed is not None:
            save_class_tokens(self.class_embed, directory)

    def _save_lora(self, directory: Path) -> None:
        """The peft adapters in diffusers' LoRA format (with their rank/alpha metadata), if there are any."""
        from peft import get_peft_model_state_dict

        config = getattr(self.network, "peft_config", None)
        if not config:
            return
        import diffusers

        pipeline = getattr(diffusers, self.lora_pipeline_class)
        name = next(iter(config))
        layers = get_peft_model_state_dict(self.network, adapter_name=name)
        pipeline.save_lora_weights(directory, safe_serialization=True,
                                   **{f"{self.lora_prefix}_lora_layers": layers,
                                      f"{self.lora_prefix}_lora_adapter_metadata": config[name].to_dict()})
        if self.lora_prefix == "unet":       # SD / SDXL: also the kohya layout ComfyUI and A1111 load
            from safetensors.torch import save_file

            save_file(kohya_lora(layers, float(config[name].lora_alpha)), directory / COMFYUI_LORA)

    def _scheduler_export(self, sampling: dict[str, Any]) -> dict[str, Any]:
        s = self.schedule_cfg
        if s is None:       # not expressible as a ScheduleConfig: keep the teacher's scheduler config verbatim
            out = dict(self._scheduler_source or {})
        elif s.kind == "flow" and sampling.get("fixed"):
            # a student that steps with Euler on its own fixed times (Phased DMD): a stock pipeline calls
            # set_timesteps(n), and UniPC's flow grid at n steps is shift(1 - linspace(1, 1/N, n + 1)) (Wan's
            # 1000/750/500/250 warped by the shift at n = 4: 999, 937, 833, 625); at order 1 without its corrector
            # UniPC's step is DDIM in x0, i.e. Euler for rectified flow. Students trained on that grid sample alike.
            steps = int(sampling.get("steps", len(sampling.get("times", ())) or 1))
            out = {"_class_name": "UniPCMultistepScheduler", "num_train_timesteps": s.num_train_timesteps,
                   "use_flow_sigmas": True, "flow_shift": s.shift, "prediction_type": "flow_prediction",
                   "solver_order": 1, "lower_order_final": True, "disable_corrector": list(range(steps))}
        elif s.kind == "flow":
            out = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": s.num_train_timesteps,
                   "shift": s.shift, "use_dynamic_shifting": False}
        elif sampling.get("sampler") == "tcd":
            # the unified Hyper-SD / TCD student: diffusers' TCDScheduler on the same coarse grid as our ``tcd``
            # spacing (schedule.TCD_ORIGINAL_STEPS); call the pipeline with num_inference_steps, eta and
            # guidance_scale 0 (the teacher's guidance is distilled in)
            out = {"_class_name": "TCDScheduler", "num_train_timesteps": s.num_train_timesteps,
                   "beta_schedule": s.beta_schedule, "beta_start": s.beta_start, "beta_end": s.beta_end,
                   "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 0,
                   "original_inference_steps": TCD_ORIGINAL_STEPS, "timestep_spacing": "leading"}
        elif sampling.get("sampler") == "few_step":
            # a few-step student predicts x0 and re-noises with fresh noise: LCMScheduler's step (its c_skip is
            # < 1e-7 at timesteps >= 249 with timestep_scaling 10); call the pipeline with timesteps=[...] written
            # in diffdistill.json's sampling.timesteps and guidance_scale 0 (DMD2's README does the same)
            out = {"_class_name": "LCMScheduler", "num_train_timesteps": s.num_train_timesteps,
                   "beta_schedule": s.beta_schedule, "beta_start": s.beta_start, "beta_end": s.beta_end,
                   "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 0, "timestep_scaling": 10.0,
                   "original_inference_steps": 50, "timestep_spacing": "trailing"}
        else:   # DDIM with the grid our ode_sample uses by default: trailing, last step returns x0, no clipping
            out = {"_class_name": "DDIMScheduler", "num_train_timesteps": s.num_train_timesteps,
                   "beta_schedule": s.beta_schedule, "beta_start": s.beta_start, "beta_end": s.beta_end,
                   "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 0, "timestep_spacing": "trailing"}
        if self.kind != "flow" or "prediction_type" in out:
            out["prediction_type"] = _TO_DIFFUSERS[self.kind]
        return out

    @property
    def _export_subfolder(self) -> str:
        """The model subfolder of pipeline folders, read and written (subfolder None = the default name)."""
        return self.cfg.subfolder or self.default_subfolder

    def export_config(self) -> dict[str, Any]:
        # runtime switches are the training machine's business: an export loads with the defaults anywhere
        resolved = replace(self.cfg, subfolder=self._export_subfolder, schedule=self.schedule_cfg, attention="sdpa",
                           compile=False, gradient_checkpointing=False)
        if hasattr(resolved, "prediction"):
            resolved = replace(resolved, prediction=self.kind)
        return {"kind": self.registry_kind, **asdict(resolved)}

    def _timestep(self, t: Tensor, like: Tensor) -> Tensor:
        # diffusers embeds float timesteps exactly like integer ones (sinusoidal features of a float32 value)
        return self.schedule.model_time(t).to(device=like.device, dtype=torch.float32)


class DiffusersUNet(_DiffusersAdapter):
    """``UNet2DConditionModel`` behind the contract; native kind from the scheduler's ``prediction_type``.

    Shapes: x_t [B, C, H, W]; t [B]; cond.text [B, L, D] (or cond.labels [B] with class tokens); SDXL also
    cond.pooled [B, Dp] and cond.time_ids [B, n] with n * addition_time_embed_dim + Dp = the UNet's
    projection_class_embeddings_input_dim (SDXL base: n = 6, Dp = 1280).
    """

    registry_kind, network_class, default_subfolder = "unet", "UNet2DConditionModel", "unet"
    lora_pipeline_class, lora_prefix = "StableDiffusionXLPipeline", "unet"     # SD1.5 reads the same LoRA format

    def __init__(self, cfg: UNetConfig | None = None) -> None:
        super().__init__()
        cfg = _class_tokens_from_export(cfg or UNetConfig())
        self.unet, scheduler, root = self._load(cfg, ScheduleConfig())
        c = self.unet.config
        source_kind = (scheduler or {}).get("prediction_type")
        if cfg.prediction is None and source_kind is not None and source_kind not in _FROM_DIFFUSERS:
            raise ValueError(f"unsupported scheduler prediction_type {source_kind!r}; set model.prediction")
        self.kind = cfg.prediction or _FROM_DIFFUSERS.get(source_kind, "eps")
        size = c.sample_size if isinstance(c.sample_size, (list, tuple)) else (c.sample_size, c.sample_size)
        self.data_shape = (c.in_channels, *size)
        width = c.encoder_hid_dim or c.cross_attention_dim   # encoder_hid_proj (if any) maps the text width in
        self.text_width = width if isinstance(width, int) else None
        self.class_embed = make_class_embed(cfg.num_classes, cfg.class_tokens, self.text_width, self.torch_dtype,
                                            root, _REEXPORT_HINT)

    @property
    def network(self) -> nn.Module:
        return self.unet

    def feature_spec(self):
        """The mid-block output, where DMD2 attaches its GAN classifier (DMD2 sec. 4.3)."""
        from .heads import FeatureSpec

        if self.unet.mid_block is None:
            raise ValueError("this UNet has no mid block (mid_block_type=None) to attach a discriminator head to")
        return FeatureSpec("unet.mid_block", self.unet.config.block_out_channels[-1], spatial=True)

    def predict(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        c = self.unet.config
        _expect("x_t", x_t, (None, c.in_channels, None, None), "[B, C, H, W]")
        batch = x_t.shape[0]
        added = None
        if c.addition_embed_type == "text_time":
            added = self._sdxl_added(cond, batch)
        out = self.unet(x_t.to(self.torch_dtype), self._timestep(t, x_t),
                        encoder_hidden_states=self._context(cond, batch), added_cond_kwargs=added).sample
        return out.to(x_t.dtype)


    def _sdxl_added(self, cond: Cond, batch: int) -> dict[str, Tensor]:
        c = self.unet.config
        if cond.pooled is None or cond.time_ids is None:
            raise ValueError("this SDXL-style UNet (addition_embed_type='text_time') needs cond.pooled [B, Dp] (pooled "
                             "text embedding) and cond.time_ids [B, 6] (original size, crop top-left, target size); "
                             f"missing: {[n for n in ('pooled', 'time_ids') if getattr(cond, n) is None]}")
        _expect("cond.pooled", cond.pooled, (batch, None), "[B, Dp]")
        _expect("cond.time_ids", cond.time_ids, (batch, None), "[B, n]")
        got = cond.time_ids.shape[1] * c.addition_time_embed_dim + cond.pooled.shape[1]
        if got != c.projection_class_embeddings_input_dim:
            raise ValueError(f"cond.time_ids [B, {cond.time_ids.shape[1]}] and cond.pooled [B, {cond.pooled.shape[1]}] "
                             f"give {got} added features, expected projection_class_embeddings_input_dim="
                             f"{c.projection_class_embeddings_input_dim} (= n * {c.addition_time_embed_dim} + Dp)")
        return {"text_embeds": cond.pooled.to(self.torch_dtype), "time_ids": cond.time_ids.to(self.torch_dtype)}

    _text_null_help = ("a text-conditioned UNet has no built-in null condition: pass guided(model, w, uncond=Cond("
                       "text=..., pooled=..., time_ids=...)) holding the empty-prompt embedding from the same text "
                       "encoders (SDXL's pipeline uses zeros instead when force_zeros_for_empty_prompt is set)")


class DiffusersWan(_DiffusersAdapter):
    """``WanTransformer3DModel`` behind the contract, native kind ``flow``; timestep = t * 1000.

    Shapes: x_t [B, T, C, H, W] (our layout; diffusers' Wan takes [B, C, T, H, W], permuted here and only here);
    t [B] or per-frame [B, T]; cond.text [B, L, D] (umT5 embedding, D = text_dim).
    """

    registry_kind, network_class, default_subfolder = "wan", "WanTransformer3DModel", "transformer"
    lora_pipeline_class, lora_prefix = "WanPipeline", "transformer"

    def __init__(self, cfg: WanConfig | None = None) -> None:
        super().__init__()
        cfg = _class_tokens_from_export(cfg or WanConfig())
        self.transformer, _, root = self._load(cfg, ScheduleConfig(kind="flow", shift=5.0))
        if self.schedule.kind != "flow":
            raise ConfigError(f"Wan is a rectified-flow model but its schedule resolved to {self.schedule.kind!r}; "
                              "set model.schedule.kind=flow")
        self.kind = "flow"
        self.data_shape = (cfg.num_frames, self.transformer.config.in_channels, cfg.height, cfg.width)
        patch = list(self.transformer.config.patch_size)
        if any(size % p for size, p in zip((cfg.num_frames, cfg.height, cfg.width), patch)):
            raise ConfigError(f"model.num_frames, height, width = {[cfg.num_frames, cfg.height, cfg.width]} are not "
                              f"multiples of the transformer's patch_size {patch} (frames, height, width): pick a clip "
                              "size the patches tile exactly, or another patch_size")
        self.text_width = self.transformer.config.text_dim
        self.class_embed = make_class_embed(cfg.num_classes, cfg.class_tokens, self.text_width, self.torch_dtype,
                                            root, _REEXPORT_HINT)
        self.causal: BlockCausal | None = None
        self._stream: tuple[KVCache, bool] | None = None
        if cfg.chunk_frames or cfg.window_chunks:
            if not cfg.chunk_frames:
                raise ConfigError("model.window_chunks needs model.chunk_frames > 0 (a window counts chunks)")
            self.causal = BlockCausal(self.transformer, cfg.chunk_frames, cfg.window_chunks)
            self.causal.check_frames(cfg.num_frames)

    @property
    def network(self) -> nn.Module:
        return self.transformer

    def feature_spec(self):
        """The hidden states [B, L, D] after the middle transformer block: the critic's features a discriminator head
        reads (Self Forcing's GAN classifies the fake score's features, arXiv:2506.08009 sec. 3.4)."""
        from .heads import FeatureSpec

        middle = len(self.transformer.blocks) // 2
        return FeatureSpec(f"transformer.blocks.{middle}", self.transformer.config.num_attention_heads
                           * self.transformer.config.attention_head_dim, spatial=False, tokens=True)

    def make_causal(self, chunk_frames: int, window_chunks: int = 0) -> "DiffusersWan":
        """Turn this (bidirectional) Wan block-causal in place: same weights, our self-attention processor; the
        export records the chunking. Self forcing's student starts as such a copy of the teacher."""
        if self.causal is not None:
            raise ValueError(f"this Wan is already block-causal (chunk_frames={self.causal.chunk_frames})")
        self.causal = BlockCausal(self.transformer, chunk_frames, window_chunks)
        self.causal.check_frames(self.cfg.num_frames)
        # a checkpointed block recomputes its forward in backward, after the KV cache has moved on: the streamed
        # student trains without it (its graph holds one chunk's exit step per chunk, not whole clips)
        if self.transformer.is_gradient_checkpointing:
            self.transformer.disable_gradient_checkpointing()
        self.cfg = replace(self.cfg, chunk_frames=chunk_frames, window_chunks=window_chunks,
                           gradient_checkpointing=False)
        return self

    def new_cache(self) -> KVCache:
        """An empty KV cache for streaming one batch (causal models)."""
        if self.causal is None:
            raise ValueError("this Wan is bidirectional (model.chunk_frames = 0): streaming needs a causal model, "
                             "e.g. a self-forcing student's export")
        return KVCache.empty(len(self.transformer.blocks))

    @contextmanager
    def streaming(self, cache: KVCache, write: bool = False) -> Iterator[None]:
        """Forwards inside run one chunk [B, chunk_frames, C, H, W] against ``cache``; ``write=True`` (under
        ``torch.no_grad``) appends the chunk's keys/values instead, at the frame index the cache has reached."""
        if self.causal is None:
            self.new_cache()                    # raises the bidirectional-model error
        saved, self._stream = self._stream, (cache, write)
        try:
            yield
        finally:
            self._stream = saved

    def predict(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        c = self.transformer.config
        _expect("x_t", x_t, (None, None, c.in_channels, None, None), "[B, T, C, H, W]")
        batch, frames, _, height, width = x_t.shape
        p_t, p_h, p_w = c.patch_size
        if frames % p_t or height % p_h or width % p_w:
            raise ValueError(f"x_t: frames, height, width {[frames, height, width]} must be multiples of the patch "
                             f"size {list(c.patch_size)}")
        context = self._context(cond, batch)
        timestep = self._timestep(t, x_t)
        if timestep.dim() == 2:     # per-frame times -> one per token, the [B, seq_len] form Wan 2.2 TI2V uses
            _expect("t", t, (batch, frames), "[B] or per-frame [B, T]")
            timestep = timestep[:, ::p_t].repeat_interleave((height // p_h) * (width // p_w), dim=1)
        if self.causal is None:
            mode = nullcontext()
        elif self._stream is not None:
            mode = self.causal.streaming(self._stream[0], frames, height, width, write=self._stream[1])
        else:
            mode = self.causal.full(frames, height, width, x_t.device)
        with mode:
            out = self.transformer(x_t.permute(0, 2, 1, 3, 4).to(self.torch_dtype), timestep,
                                   encoder_hidden_states=context, return_dict=False)[0]
        return out.permute(0, 2, 1, 3, 4).to(x_t.dtype)

    _text_null_help = ("a text-conditioned Wan has no built-in null condition: pass guided(model, w, uncond=Cond("
                       "text=...)) holding the negative-prompt embedding (WanPipeline encodes negative_prompt, '' by "
                       "default)")


# ---------------------------------------------------------------------- helpers
def _memory_switches(network: nn.Module, cfg: UNetConfig | WanConfig) -> None:
    """A role's attention backend, gradient checkpointing and torch.compile, through diffusers' and torch's own
    switches (precision is the role's ``dtype``, beside the trainer's autocast ``mixed_precision``)."""
    if cfg.gradient_checkpointing:
        network.enable_gradient_checkpointing()
    if cfg.attention == "xformers":
        import importlib.util

        if importlib.util.find_spec("xformers") is None:
            raise ConfigError("attention: xformers, but the xformers package is not installed; install the [gpu] "
                              "extra (pip install 'diffdistill[gpu]', CUDA machines) or use attention: sdpa")
        network.enable_xformers_memory_efficient_attention()
    if cfg.compile:
        network.compile()        # in place: parameter names (and so checkpoints and exports) stay as they are


def kohya_lora(peft_layers: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """A UNet's peft LoRA state dict (``<module>.lora_A.weight`` / ``lora_B``) in the kohya layout ComfyUI, A1111 and
    SD.Next load: ``lora_unet_<module with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``, through
    diffusers' converter. The converter writes alpha = rank (scale 1); the adapter's own alpha replaces it, since
    these loaders scale the update by alpha / rank."""
    from diffusers.utils import convert_state_dict_to_kohya

    out = convert_state_dict_to_kohya({f"unet.{k}": v.detach().contiguous() for k, v in peft_layers.items()})
    return {k: (torch.tensor(alpha) if k.endswith(".alpha") else v) for k, v in out.items()}


def _locate(root: Path, subfolder: str | None, what: str) -> tuple[Path, str | None, dict | None]:
    """(folder, subfolder to load from, scheduler config or None) for a pipeline folder or a bare model folder."""
    layout = (f"a diffusers pipeline folder holding {subfolder or '<model>'}/config.json (+ scheduler/"
              f"{SCHEDULER_CONFIG}), or a bare model folder holding config.json and diffusion_pytorch_model.safetensors")
    if not root.is_dir():
        raise FileNotFoundError(f"{what}: pretrained path {str(root)!r} does not exist; expected {layout}")
    if (root / "config.json").is_file():
        sub, candidates = None, [root / "scheduler"]
        if subfolder and root.name == subfolder:      # pointed at <pipeline>/unet: its scheduler is a sibling
            candidates.append(root.parent / "scheduler")
    elif subfolder and (root / subfolder / "config.json").is_file():
        sub, candidates = subfolder, [root / "scheduler"]
    else:
        raise FileNotFoundError(f"{what}: {str(root)!r} holds neither config.json nor "
                                f"{subfolder or '<subfolder>'}/config.json; expected {layout}")
    scheduler = next((json.loads((d / SCHEDULER_CONFIG).read_text()) for d in candidates
                      if (d / SCHEDULER_CONFIG).is_file()), None)
    return root, sub, scheduler


WAN_DEFAULT_SIZE = {"num_frames": 9, "height": 16, "width": 16}


def _class_tokens_from_export(cfg: UNetConfig | WanConfig) -> UNetConfig | WanConfig:
    """A folder exported by diffdistill records its class-token settings (and a Wan its latent clip size) in
    diffdistill.json: use them where the recipe leaves them unset (num_classes 0, sizes None), so `pretrained:
    <export>` is all a distillation recipe needs."""
    meta = Path(cfg.pretrained).expanduser() / "diffdistill.json" if cfg.pretrained else None
    saved = json.loads(meta.read_text()).get("model", {}) if meta is not None and meta.is_file() else {}
    if not cfg.num_classes and saved:
        cfg = replace(cfg, num_classes=int(saved.get("num_classes", 0)), class_tokens=int(saved.get("class_tokens", 1)))
    if isinstance(cfg, WanConfig):
        sizes = {k: getattr(cfg, k) if getattr(cfg, k) is not None else int(saved.get(k) or default)
                 for k, default in WAN_DEFAULT_SIZE.items()}
        cfg = replace(cfg, **sizes)
    return cfg


def _as_schedule_config(schedule: Schedule, scheduler: dict) -> ScheduleConfig | None:
    """The ScheduleConfig equal to ``schedule`` read from ``scheduler``, or None when none is (e.g. trained_betas)."""
    if schedule.kind == "flow":
        return ScheduleConfig(kind="flow", shift=schedule.shift, num_train_timesteps=schedule.num_train_timesteps)
    if scheduler.get("trained_betas") is not None:
        return None
    try:   # diffusers' DDPM defaults for absent keys; accepted only if it rebuilds exactly the same table
        cfg = ScheduleConfig(kind="vp", beta_schedule=scheduler.get("beta_schedule", "linear"),
                             beta_start=float(scheduler.get("beta_start", 0.0001)),
                             beta_end=float(scheduler.get("beta_end", 0.02)),
                             num_train_timesteps=schedule.num_train_timesteps)
        same = torch.equal(cfg.build().log_alphas_cumprod, schedule.log_alphas_cumprod)
    except ValueError:
        return None
    return cfg if same else None


def _expect(name: str, x: Tensor | None, shape: tuple[int | None, ...], layout: str) -> None:
    """Raise a ValueError naming the expected and the actual shape (None in ``shape`` = any size)."""
    if x is not None and x.dim() == len(shape) and all(s is None or s == g for s, g in zip(shape, x.shape)):
        return
    want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
    got = "nothing" if x is None else str(list(x.shape))
    raise ValueError(f"{name}: expected {layout} = {want}, got {got}")


def _cast(network: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast parameters to ``dtype`` but keep the class's ``_keep_in_fp32_modules`` in float32.

    What ``from_pretrained(torch_dtype=...)`` does; a plain ``.to(dtype)`` would also cast Wan's time embedder and
    norms (diffusers warns about it). Buffers (Wan's rope tables) are not parameters and keep their dtype.
    """
    keep = getattr(network, "_keep_in_fp32_modules", None) or []
    for name, param in network.named_parameters():
        param.data = param.data.to(torch.float32 if any(k in name.split(".") for k in keep) else dtype)
    return network


def _merged(network: nn.Module) -> nn.Module:
    """``network`` itself, or a copy with peft LoRA layers folded into their base layers (for diffusers export)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return network
    names = [name for name, module in network.named_modules() if isinstance(module, BaseTunerLayer)]
    if not names:
        return network
    network = copy.deepcopy(network)
    for name in names:
        layer = network.get_submodule(name)
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(network.get_submodule(parent), child, layer.get_base_layer())
    return network
