"""The method contract: a method holds roles and computes losses; it owns no optimizer, accelerator or I/O.

The trainer (trainer.py) maps each trainable role (a parameter group) to an optimizer from the recipe, runs the
phases that :meth:`Method.phases` names for every step, accumulates, clips, steps, keeps the EMA, logs and saves.
Five methods share that one loop, so fixing the loop fixes all five.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..data import Batch
from ..models.base import Cond, DiffusionModel, trainable_parameters

PREVIEW_PROMPTS = 16          # text-conditioned previews: at most this many images (the batch's prompts, repeated)


class Method(nn.Module):
    """Base class. Subclasses set ``groups`` (trainable role names, each an attribute holding a module), and
    implement :meth:`loss`, :meth:`preview` and :meth:`export_model`."""

    groups: tuple[str, ...] = ()

    def trainable(self) -> dict[str, nn.Module]:
        """Role name -> module; the trainer prepares (e.g. DDP-wraps) each one and hands it back via :meth:`attach`."""
        return {name: getattr(self, name) for name in self.groups}

    def attach(self, name: str, module: nn.Module) -> None:
        """Replace role ``name`` with its prepared wrapper (same call signature)."""
        if name not in self.groups:
            raise KeyError(f"{type(self).__name__} has no trainable role {name!r}; roles: {self.groups}")
        setattr(self, name, module)

    def role(self, name: str) -> nn.Module:
        """Role ``name`` without any distributed wrapper (for sampling, EMA and export)."""
        module = getattr(self, name)
        return getattr(module, "module", module)     # DDP keeps the wrapped network in `.module`

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
        """The model a run exports (the student; the trainer swaps in its EMA weights when it keeps one)."""
        raise NotImplementedError

    def sampling_info(self) -> dict:
        """How to sample the exported model (sampler, times, guidance); saved next to the exported weights."""
        return {}
