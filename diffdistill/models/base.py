"""The model contract: ``pred = model(x_t, t, cond)`` returns a :class:`Prediction` readable as x0 / eps / v / flow.

Every network (the analytic toy, an MLP, a diffusers UNet or Wan transformer) is wrapped into this one contract, so
samplers and methods never see timesteps, channel layouts or the network's native parameterisation (the k-diffusion
``Denoiser`` idea). Classifier-free guidance is a wrapper (:class:`Guided`), not a flag in ``forward``.

Shapes legend used across the package: B batch, C channels, T frames, H W spatial, L D text tokens and width.
Images are [B, C, H, W], video [B, T, C, H, W], points [B, 2]; ``t`` is [B].
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..schedule import Kind, Schedule

NULL_LABEL = -1   # class label meaning "unconditional" (the CFG null token)


@dataclass
class Cond:
    """Conditioning for a batch. Every field is optional and batch-first.

    Shapes: text [B, L, D] (encoder hidden states), pooled [B, Dp] (SDXL pooled text), time_ids [B, 6] (SDXL
    added time ids), labels [B] (class ids, ``NULL_LABEL`` = unconditional).
    """

    text: Tensor | None = None
    pooled: Tensor | None = None
    time_ids: Tensor | None = None
    labels: Tensor | None = None

    def _tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @property
    def batch_size(self) -> int | None:
        sizes = {v.shape[0] for v in self._tensors().values()}
        if len(sizes) > 1:
            raise ValueError(f"Cond fields disagree on the batch size: { {k: v.shape[0] for k, v in self._tensors().items()} }")
        return sizes.pop() if sizes else None

    def map(self, fn) -> "Cond":
        """Apply ``fn`` to every tensor field (e.g. ``.to(device)``, indexing)."""
        return replace(self, **{k: fn(v) for k, v in self._tensors().items()})

    def to(self, device: torch.device | str) -> "Cond":
        return self.map(lambda v: v.to(device))

    def cat(self, other: "Cond") -> "Cond":
        """Concatenate two conditions along the batch (CFG runs cond and uncond in one forward pass)."""
        a, b = self._tensors(), other._tensors()
        if a.keys() != b.keys():
            raise ValueError(f"cannot batch conditions with different fields: {sorted(a)} vs {sorted(b)}")
        return replace(self, **{k: torch.cat([a[k], b[k]]) for k in a})


def as_cond(cond: Cond | None) -> Cond:
    return Cond() if cond is None else cond


@dataclass(eq=False)
class Prediction:
    """A network output that knows its native kind and converts on demand through the model's schedule.

    ``pred.x0``, ``pred.eps``, ``pred.v``, ``pred.flow`` all have the shape of ``x_t``; conversions run in float64
    (see :mod:`diffdistill.schedule`). ``pred.native`` is the raw network output.

    A dataclass so that DDP finds the output tensors of a prepared role when it looks for unused parameters
    (``Method.partial_updates``; torch's ``_find_tensors`` reads tensors, containers and dataclasses only).
    """

    native: Tensor
    kind: Kind
    x_t: Tensor
    t: Tensor
    schedule: Schedule
    logits: Tensor | None = None          # [B] discriminator logits when a GAN head is attached (models/heads.py)
    _cache: dict[str, Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._cache = {self.kind: self.native}

    def as_kind(self, kind: Kind) -> Tensor:
        if kind not in self._cache:
            self._cache[kind] = self.schedule.convert(self.native, self.x_t, self.t, self.kind, kind)
        return self._cache[kind]

    x0 = property(lambda self: self.as_kind("x0"))
    eps = property(lambda self: self.as_kind("eps"))
    v = property(lambda self: self.as_kind("v"))
    flow = property(lambda self: self.as_kind("flow"))


class DiffusionModel(nn.Module):
    """Base class of every wrapped network. Subclasses implement :meth:`predict` and set ``schedule`` and ``kind``.

    ``forward(x_t, t, cond)`` validates ``t`` and returns a :class:`Prediction`; ``predict`` returns the native
    tensor. ``data_shape`` (per-sample shape, e.g. (4, 128, 128)) lets samplers draw noise.
    """

    schedule: Schedule
    kind: Kind
    data_shape: tuple[int, ...]

    def predict(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x_t: Tensor, t: Tensor, cond: Cond | None = None, *, logits_only: bool = False) -> Prediction:
        """``logits_only``: a discriminator forward whose loss reads only ``pred.logits``; the prediction comes back
        detached, so a DDP wrapper that looks for unused parameters (``Method.partial_updates``) sees the output
        layers as unused instead of waiting for their gradients."""
        t = _per_sample_t(t, x_t)
        native = self.predict(x_t, t, as_cond(cond))
        logits = self._head_logits()
        if logits_only:
            if logits is None:
                raise ValueError(f"{type(self).__name__} has no discriminator head: attach_head(model) first")
            native = native.detach()
        return Prediction(native, self.kind, x_t, t, self.schedule, logits)

    def feature_spec(self):
        """Where a discriminator head reads this model's features (a ``heads.FeatureSpec``)."""
        raise NotImplementedError(f"{type(self).__name__} exposes no features for a discriminator head")

    def _head_logits(self) -> Tensor | None:
        head = getattr(self, "gan_head", None)
        if head is None:
            return None
        source = self.get_submodule(head.spec.module)
        features = source.__dict__.pop("_gan_features", None)     # captured by the hook of heads.attach_head
        if features is None:
            raise RuntimeError(f"no features were captured from {head.spec.module!r} in this forward pass")
        return head(features)

    def null_cond(self, cond: Cond) -> Cond:
        """The unconditional counterpart of ``cond`` used for CFG (labels -> NULL_LABEL; text is model specific)."""
        if cond.labels is not None:
            return replace(cond, labels=torch.full_like(cond.labels, NULL_LABEL))
        raise ValueError(f"{type(self).__name__} has no built-in null condition for {cond}; pass `uncond` explicitly")

    def export_config(self) -> dict[str, Any]:
        """Everything needed to rebuild this model (saved next to exported weights)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be exported")


def _per_sample_t(t: Tensor | float, x_t: Tensor) -> Tensor:
    t = torch.as_tensor(t, device=x_t.device)
    if t.dim() == 0:
        t = t.expand(x_t.shape[0])
    if t.shape[0] != x_t.shape[0]:
        raise ValueError(f"t has batch size {t.shape[0]} but x_t has {x_t.shape[0]} (expected t of shape [B] or [])")
    if not torch.is_floating_point(t):
        raise TypeError("t must be a float tensor in [0, 1] (continuous time); use schedule.t_from_model_time to "
                        "convert integer timesteps")
    if bool(((t < 0) | (t > 1)).any()):
        raise ValueError(f"t must lie in [0, 1] (1 = noise); got values in [{t.min().item():.4g}, {t.max().item():.4g}]")
    return t


class Guided(nn.Module):
    """Classifier-free guidance in the STANDARD form: ``uncond + w * (cond - uncond)`` (Ho & Salimans 2022).

    w = 1 returns the conditional prediction, w = 0 the unconditional one. Some codebases (the LCM scripts,
    FastVideo, CausVid) use ``cond + w (cond - uncond)``, which equals this form at w + 1: convert before copying
    their guidance scales. Guidance is applied to the eps (and hence x0) prediction; for v- and flow-predicting
    networks the combination is linear, so combining in any kind gives the same x0.
    """

    def __init__(self, model: DiffusionModel, scale: float | Tensor, uncond: Cond | None = None) -> None:
        super().__init__()
        # a tensor scale [B] guides each sample with its own w (Hyper-SD draws w from a range per sample)
        self.model, self.uncond = model, uncond
        self.scale = scale if isinstance(scale, Tensor) else float(scale)
        self.schedule, self.kind = model.schedule, model.kind
        self.data_shape = model.data_shape

    def forward(self, x_t: Tensor, t: Tensor, cond: Cond | None = None) -> Prediction:
        cond = as_cond(cond)
        if isinstance(self.scale, float) and self.scale == 1.0:
            return self.model(x_t, t, cond)
        uncond = self.uncond if self.uncond is not None else self.model.null_cond(cond)
        t = _per_sample_t(t, x_t)
        both = self.model(torch.cat([x_t, x_t]), torch.cat([t, t]), cond.cat(uncond))
        c, u = both.native.chunk(2)
        scale = self.scale
        if isinstance(scale, Tensor):
            scale = scale.to(device=c.device, dtype=c.dtype).reshape(-1, *([1] * (c.dim() - 1)))
        return Prediction(u + scale * (c - u), self.model.kind, x_t, t, self.model.schedule)


def guided(model: DiffusionModel, scale: float | Tensor, uncond: Cond | None = None) -> DiffusionModel | Guided:
    """Wrap ``model`` with standard-form CFG at ``scale`` (see :class:`Guided`; a tensor [B]: one scale per sample);
    a float scale of 1 returns the model itself."""
    return model if not isinstance(scale, Tensor) and scale == 1.0 else Guided(model, scale, uncond)


# ---------------------------------------------------------------------- roles
def freeze(model: nn.Module) -> nn.Module:
    """Freeze a teacher: no gradients, eval mode. The teacher's weights are never modified by any method."""
    model.requires_grad_(False)
    return model.eval()


@dataclass
class LoraConfig:
    """LoRA adapter for a student or critic copy (peft). ``rank`` 0 means a full copy."""

    rank: int = 0
    alpha: float | None = None           # defaults to rank (scale 1)
    target_modules: list[str] | None = None   # None: the model's own default (attention projections)
    dropout: float = 0.0
    init_from: str | None = None         # an export (or run dir) whose pytorch_lora_weights.safetensors starts the
                                         # adapters: a later stage continues an earlier stage's LoRA (Hyper-SD)


def role_copy(teacher: DiffusionModel, lora: LoraConfig | None = None) -> DiffusionModel:
    """A trainable copy of ``teacher`` for the student or critic role: full weights, or LoRA through peft.

    The copy never shares parameters with the teacher, so training it leaves the teacher bit-identical.
    """
    copy_ = copy.deepcopy(teacher)
    copy_.requires_grad_(True).train()
    if lora is None or lora.rank == 0:
        return copy_
    from peft import LoraConfig as PeftLoraConfig, inject_adapter_in_model

    targets = lora.target_modules or getattr(copy_, "lora_targets", None)
    if not targets:
        raise ValueError(f"{type(copy_).__name__} names no default LoRA target modules; set lora.target_modules")
    copy_.requires_grad_(False)           # LoRA trains the adapters only (class tokens etc. stay frozen too)
    network = copy_.lora_network()
    inject_adapter_in_model(PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha or lora.rank,
                                           target_modules=list(targets), lora_dropout=lora.dropout), network)
    if lora.init_from:
        load_lora_adapters(network, lora.init_from)
    return copy_


LORA_WEIGHTS = "pytorch_lora_weights.safetensors"     # diffusers' save_lora_weights file name


def scale_lora(network: nn.Module, weight: float) -> int:
    """Multiply every peft LoRA layer's update by ``weight`` (merge at that weight: 0 = the base, 1 = as trained);
    returns the number of layers scaled."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in network.modules() if isinstance(m, LoraLayer)]
    for layer in layers:
        layer.scale_layer(weight)
    return len(layers)


def load_lora_adapters(network: nn.Module, source: str | Path) -> None:
    """Set ``network``'s injected adapters from ``source``'s LORA_WEIGHTS (diffusers' layout, keys prefixed with
    the network's pipeline name, e.g. ``unet.``). Every adapter must be found, with the same shapes."""
    from peft import set_peft_model_state_dict

    from ..files import load_safetensors
    from .registry import find_export

    path = Path(source) / LORA_WEIGHTS
    if not path.is_file():
        path = find_export(source) / LORA_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"lora.init_from: {str(source)!r} holds no {LORA_WEIGHTS}; point it at the export of "
                                "a run whose student was a LoRA (student_lora.rank > 0)")
    state = {k.split(".", 1)[1]: v for k, v in load_safetensors(path).items()}      # drop "unet." / "transformer."
    ours = {n for n, _ in network.named_parameters() if "lora_" in n}
    advice = "use the same rank and target_modules as the run that wrote it"
    try:
        result = set_peft_model_state_dict(network, state)
    except RuntimeError as err:            # shapes differ: another rank
        raise ValueError(f"lora.init_from: {path} does not fit this LoRA ({str(err).splitlines()[1].strip()}): "
                         f"{advice}") from None
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing or len(state) != len(ours):
        raise ValueError(f"lora.init_from: {path} does not fit this LoRA ({len(state)} tensors for {len(ours)}; "
                         f"e.g. {(list(result.unexpected_keys) + missing)[:2]}): {advice}")


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]

