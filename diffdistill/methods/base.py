"""The method contract: a method holds roles and computes losses; it owns no optimizer, accelerator or I/O.

A method declares its roles (:meth:`Method.declare_roles`: any number, each trainable or frozen, each optionally
given its own model section in the recipe as ``roles: {name: {kind: ...}}``). The trainer (train/trainer.py) maps
each trainable role (a parameter group) to an optimizer from the recipe, prepares it for the run's processes, runs
the phases that :meth:`Method.phases` names for every step, accumulates, clips, steps, calls :meth:`after_update`,
keeps the EMA, logs and saves. Five methods share that one loop, so fixing the loop fixes all five.

Distributed wrappers are hidden: after preparation a trainable role is still called as ``self.student(x_t, t,
cond)`` and still answers ``self.student.schedule``; the call goes through accelerate's wrapper (DDP / FSDP gradient
synchronisation) and attributes come from the network itself. See docs/adding-a-method.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..data import Batch
from ..inference.spec import SamplingSpec
from ..models.base import Cond, DiffusionModel, trainable_parameters

PREVIEW_PROMPTS = 16          # text-conditioned previews: at most this many images (the batch's prompts, repeated)


@dataclass(frozen=True)
class Role:
    """A network a method holds, as an attribute of the same name. ``trainable``: it gets an optimizer (a parameter
    group, ``trainer.optimizers.<name>``). ``section``: the recipe may give it a model of its own
    (``roles: {<name>: {kind: ...}}``); without one the method builds it (DMD2: a copy of the teacher)."""

    name: str
    trainable: bool = True
    section: bool = True


class Prepared(nn.Module):
    """A trainable role after the trainer prepared it: calls go through accelerate's wrapper (DDP / FSDP gradient
    sync), attributes (``schedule``, ``data_shape``, ...) come from the network itself, so methods never see the
    wrapper. ``network`` is the unwrapped model (for sampling, the EMA and export)."""

    def __init__(self, wrapped: nn.Module, network: nn.Module) -> None:
        super().__init__()
        self.wrapped = wrapped
        object.__setattr__(self, "network", network)      # not a second registration of the same parameters

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.wrapped(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "network"), name)


class Method(nn.Module):
    """Base class. Subclasses declare their roles (:meth:`declare_roles`, or the shorthand ``groups``: the names of
    trainable roles), hold each as an attribute, and implement :meth:`loss`, :meth:`preview`, :meth:`export_model`
    and :meth:`sampling_spec`; optionally :meth:`phases` and :meth:`after_update`."""

    groups: tuple[str, ...] = ()
    requires_ema: ClassVar[bool] = False       # True: the method reads its EMA (a consistency target), set ema_decay
    partial_updates: ClassVar[bool] = False    # True: a step may leave parts of a group without gradients (DDP then
                                               # looks for unused parameters; train/trainer.py make_accelerator)

    @classmethod
    def declare_roles(cls, cfg: Any) -> tuple[Role, ...]:
        """The roles the method holds for config ``cfg``, known before any network is built (the recipe's role
        sections and optimizer groups are checked against them). Default: each name in ``groups``, trainable."""
        return tuple(Role(name) for name in cls.groups)

    def trainable(self) -> dict[str, nn.Module]:
        """Role name -> module; the trainer prepares (e.g. DDP-wraps) each one and hands it back via :meth:`attach`."""
        return {name: self.role(name) for name in self.groups}

    def attach(self, name: str, module: nn.Module) -> None:
        """Put role ``name``'s prepared wrapper in place (the role keeps its call signature and attributes)."""
        if name not in self.groups:
            raise KeyError(f"{type(self).__name__} has no trainable role {name!r}; roles: {self.groups}")
        setattr(self, name, Prepared(module, self.role(name)))

    def role(self, name: str) -> nn.Module:
        """Role ``name`` without any distributed wrapper (the trainer's view: sampling, the EMA and export)."""
        module = getattr(self, name)
        return module.network if isinstance(module, Prepared) else module

    def bind_ema(self, ema: nn.Module | None) -> None:
        """The trainer hands over the EMA it keeps of its EMA group (``trainer.ema_decay``, ``trainer.ema_group``)."""
        object.__setattr__(self, "_ema", ema)          # read-only for the method; not one of its submodules

    def ema_model(self) -> DiffusionModel:
        """The EMA-averaged copy of the EMA group's network (a consistency-distillation target reads it)."""
        ema = self.__dict__.get("_ema")
        if ema is None:
            raise ValueError(f"{type(self).__name__} reads the EMA of its network: set trainer.ema_decay (e.g. 0.95)")
        return ema.module

    def after_update(self, phase: str, step: int) -> None:
        """Called after each optimizer step of ``phase`` (and the EMA update), with the 0-based step index."""

    def check_schedules(self) -> None:
        """Every role (and the teacher) must use one noise schedule: a network fed inputs noised on another one's
        schedule learns the wrong denoiser silently. Raises a ValueError naming the roles that differ."""
        models = {name: self.role(name) for name, module in self.named_children()
                  if isinstance(self.role(name), DiffusionModel)}
        if not models:
            return
        first, reference = next(iter(models.items()))
        for name, model in models.items():
            if not model.schedule.matches(reference.schedule):
                raise ValueError(f"{type(self).__name__}: role {name!r} uses a {model.schedule.kind} schedule that "
                                 f"differs from {first!r}'s ({reference.schedule.kind}); give every role the same "
                                 "`schedule` (or the same pretrained scheduler) in the recipe")

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {name: trainable_parameters(module) for name, module in self.trainable().items()}

    def phases(self, step: int) -> tuple[str, ...]:
        """Which groups take an optimizer step at ``step``, in order (default: every group, every step)."""
        return self.groups

    def loss(self, phase: str, batch: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:  # pragma: no cover
        """Scalar loss for ``phase`` and namespaced logs (``"<phase>/<name>"``)."""
        raise NotImplementedError

    def preview(self, n: int, seed: int = 0, *, batch: Batch | None = None) -> Tensor:  # pragma: no cover
        """``n`` samples from the current model, for grids/plots written during training. ``batch``: the data's
        batch 0 (the trainer passes it), whose prompts condition a text model's previews (:meth:`preview_cond`)."""
        raise NotImplementedError

    def preview_inputs(self, n: int, seed: int, batch: Batch | None) -> tuple[DiffusionModel, Tensor, Cond | None,
                                                                           Cond | None]:
        """(exported model, starting noise [n', *data_shape] from ``seed`` on its device, condition, unconditional
        condition): what every method's :meth:`preview` samples from (n' < n for text models, see
        :meth:`preview_cond`)."""
        model = self.export_model()
        device = next(iter(model.parameters()), torch.empty(0)).device
        n, cond, uncond = self.preview_cond(n, getattr(self, "num_classes", 0), batch, device)
        noise = torch.randn(n, *model.data_shape, generator=torch.Generator().manual_seed(seed)).to(device)
        return model, noise, cond, uncond

    def preview_cond(self, n: int, num_classes: int, batch: Batch | None,
                     device: torch.device) -> tuple[int, Cond | None, Cond | None]:
        """(sample count, condition, unconditional condition) for ``n`` preview samples: class labels 0, 1, ... for
        class models; for text models the prompts of ``batch`` repeated (at most PREVIEW_PROMPTS images), with its
        empty-prompt condition for CFG; None for unconditional models. The trainer always hands the batch over (an
        export takes no training step, so no training batch would have been seen)."""
        if num_classes:
            return n, Cond(labels=(torch.arange(n) % num_classes).to(device)), None
        if batch is None or batch.cond.text is None:
            return n, None, None
        n = min(n, PREVIEW_PROMPTS)
        repeat = torch.arange(n) % batch.cond.batch_size
        pick = lambda c: c.map(lambda v: v[repeat].to(device)) if c is not None else None
        return n, pick(batch.cond), pick(batch.uncond)

    def export_model(self) -> DiffusionModel:  # pragma: no cover
        """The model a run exports (the student; the trainer swaps in its EMA weights when it keeps an EMA of this
        very role)."""
        raise NotImplementedError

    def sampling_spec(self) -> SamplingSpec:  # pragma: no cover
        """How to sample the exported model (inference/spec.py); saved in its diffdistill.json and read back by the
        one sampling path (inference/generate.py)."""
        raise NotImplementedError
