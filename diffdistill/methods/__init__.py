"""Method registry: ``method.name`` in a recipe -> (config dataclass, method class, description)."""

from __future__ import annotations

from typing import Any

from ..config import ConfigError, Section, from_dict, unknown_key_error
from ..models.base import DiffusionModel
from .asd import ASD, ASDConfig
from .base import Method, Role
from .dmd2 import DMD2, DMD2Config
from .hyper_one_step import HyperOneStep, HyperOneStepConfig
from .ode_regression import ODERegression, ODERegressionConfig
from .phased_dmd import PhasedDMD, PhasedDMDConfig
from .reward_feedback import RewardFeedback, RewardFeedbackConfig
from .self_forcing import SelfForcing, SelfForcingConfig
from .teacher import Teacher, TeacherConfig
from .tscd import TSCD, TSCDConfig

# name -> (config class, method class with a `build(cfg, models, num_classes)` classmethod, description)
METHODS: dict[str, tuple[type, type[Method], str]] = {
    "teacher": (TeacherConfig, Teacher, "plain denoising / flow-matching training (builds teachers)"),
    "dmd2": (DMD2Config, DMD2, "DMD2: distribution matching + two time-scale updates + backward simulation"),
    "phased_dmd": (PhasedDMDConfig, PhasedDMD, "Phased DMD: DMD per SNR phase, one expert and one fake score per "
                   "phase, sub-interval score matching (arXiv:2510.27684)"),
    "ode_regression": (ODERegressionConfig, ODERegression, "ODE regression: a block-causal video student regressed "
                       "onto its teacher's ODE trajectories (the initialisation of self forcing)"),
    "tscd": (TSCDConfig, TSCD, "Hyper-SD trajectory-segmented consistency distillation: stages of 8-4-2-1 segments, "
             "EMA target, optional adversarial term; the unified student samples with TCD (arXiv:2404.13686)"),
    "hyper_one_step": (HyperOneStepConfig, HyperOneStep, "Hyper-SD one-step enhancement: DMD2 on a one-step student at "
                       "timestep 999 plus the TSCD consistency term; the unified student samples with TCD at 1-8 "
                       "steps"),
    "reward_feedback": (RewardFeedbackConfig, RewardFeedback, "reward feedback (ReFL, Hyper-SD's feedback stage): a "
                        "LoRA on a finished student trained to raise a reward model's score, with a consistency term"),
    "self_forcing": (SelfForcingConfig, SelfForcing, "Self Forcing: a block-causal video student trained with DMD on "
                     "its own streaming rollouts (KV cache, gradient truncation)"),
    "asd": (ASDConfig, ASD, "adversarial self-distillation: self forcing plus a discriminator pushing the student's "
            "n-step rollout toward its own (n+1)-step one; one causal student for 1, 2 and 4 steps "
            "(arXiv:2511.01419)"),
}


def method_config(spec: dict[str, Any], path: str = "method") -> tuple[str, Any]:
    """Validate a ``{name: ..., **fields}`` method section; returns (name, config dataclass)."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{path} needs a `name`: one of {', '.join(METHODS)}")
    if spec["name"] not in METHODS:
        raise unknown_key_error(path, f"name={spec['name']}", [f"name={k}" for k in METHODS])
    return spec["name"], from_dict(METHODS[spec["name"]][0], {k: v for k, v in spec.items() if k != "name"}, path)


def method_roles(spec: dict[str, Any] | Section) -> tuple[Role, ...]:
    """The roles a method declares for its config (known before any model is built)."""
    section = spec if isinstance(spec, Section) else Section(*method_config(spec))
    return METHODS[section.name][1].declare_roles(section.config)


def method_class(spec: dict[str, Any] | Section) -> type[Method]:
    """The method class a method section names."""
    section = spec if isinstance(spec, Section) else Section(*method_config(spec))
    return METHODS[section.name][1]


def method_groups(spec: dict[str, Any] | Section) -> tuple[str, ...]:
    """The parameter groups a method trains: its trainable roles."""
    return tuple(r.name for r in method_roles(spec) if r.trainable)


def build_method(spec: dict[str, Any] | Section, models: dict[str, DiffusionModel | None], num_classes: int) -> Method:
    """``spec``: a method section (validated once by ``train.recipe.resolve_run``, or a raw mapping). ``models``:
    ``model`` (the network; the teacher for distillation methods) and a network for each role the recipe gives one
    (``roles:``, ``student:``, ``critic:``); the method builds the others (usually teacher copies)."""
    section = spec if isinstance(spec, Section) else Section(*method_config(spec))
    return METHODS[section.name][1].build(section.config, models, num_classes)
