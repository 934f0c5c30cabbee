"""A run's recipe: the top-level sections, validated together; building the pieces a run needs.

    model:   {kind: ..., ...}     the network; the teacher for distillation methods (registry: models/registry.py)
    roles:   {name: {kind: ...}}  optional: a network of its own for any role the method declares (default: the
                                  method builds it, usually a copy of the teacher)
    student: {kind: ..., ...}     shorthand for roles.student (and critic: for roles.critic)
    method:  {name: ..., ...}     the training method (registry: methods/__init__.py)
    data:    {name: ..., ...}     the data stream (registry: data.py)
    trainer: {...}                the loop (TrainerConfig)
    output_dir: runs/...
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, Section, from_dict, load_yaml, merge, parse_overrides, to_dict
from ..data import data_config
from ..methods import method_config, method_roles
from ..models.registry import build_section, model_config
from .trainer import TrainerConfig

# Keys that may change when a run resumes: they do not change the maths of the steps already taken (output_dir: a
# run folder that was moved or copied resumes where it now is).
RESUMABLE_KEYS = {"output_dir", "trainer.max_steps", "trainer.log_every", "trainer.sample_every", "trainer.checkpoint_every",
                  "trainer.keep_checkpoints", "trainer.log_with", "trainer.preview_count"}
# how the learning rate goes on from here: a continued run may anneal (trainer.optimizers.<group>.<key>)
RESUMABLE_SUFFIXES = (".decay_steps", ".decay_start", ".min_lr_ratio")


def resumable(key: str) -> bool:
    """Settings a run may change when it resumes: where it stops, what it logs and writes, its lr schedule ahead."""
    return key in RESUMABLE_KEYS or (key.startswith("trainer.optimizers.") and key.endswith(RESUMABLE_SUFFIXES))


@dataclass
class RunConfig:
    model: dict[str, Any]
    method: dict[str, Any]
    data: dict[str, Any]
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    output_dir: str = "runs/default"
    student: dict[str, Any] | None = None
    critic: dict[str, Any] | None = None
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)

    def role_sections(self) -> dict[str, dict[str, Any]]:
        """Every role the recipe gives a network of its own (``roles:`` plus the ``student:`` / ``critic:``
        shorthands), by role name."""
        shorthand = {name: getattr(self, name) for name in ("student", "critic") if getattr(self, name) is not None}
        return {**shorthand, **self.roles}


@dataclass(frozen=True)
class ResolvedRun:
    """A recipe validated once: its typed sections (what the run is built from), the RunConfig, and the resolved
    mapping (every default filled in) that is saved as ``config.yaml`` and inside the export."""

    run: RunConfig
    resolved: dict[str, Any]
    model: Section
    method: Section
    data: Section
    roles: dict[str, Section]

    @property
    def trainer(self) -> TrainerConfig:
        return self.run.trainer

    @property
    def output_dir(self) -> str:
        return self.run.output_dir


def build_networks(run: ResolvedRun) -> dict[str, Any]:
    """The networks a method is built from: the teacher (``model``) and one per role the recipe gives its own section
    (``student:``, ``critic:``, ``roles:``), by role name. Training and the step-time benchmark build them alike."""
    roles = {role: build_section(section, role) for role, section in run.roles.items()}
    return {"model": build_section(run.model), **roles}


def resolve_run(recipe: str | Path | dict[str, Any], overrides: list[str] | None = None) -> ResolvedRun:
    """Load a recipe (path or mapping), apply ``key=value`` overrides, validate every section once."""
    raw = load_yaml(recipe) if not isinstance(recipe, dict) else dict(recipe)
    raw = merge(raw, parse_overrides(overrides or []))
    run = from_dict(RunConfig, raw)
    resolved = to_dict(run)
    for role in run.roles:
        if role in ("student", "critic") and getattr(run, role) is not None:
            raise ConfigError(f"the recipe gives role {role!r} twice (`{role}:` and `roles.{role}`); keep one")
    model = Section(*model_config(run.model, "model"))
    method = Section(*method_config(run.method, "method"))
    data = Section(*data_config(run.data, "data"))
    roles = {name: Section(*model_config(spec, name if name not in run.roles else f"roles.{name}"))
             for name, spec in run.role_sections().items()}
    for key, section in (("model", model), ("method", method), ("data", data)):
        resolved[key] = {"kind" if key == "model" else "name": section.name, **to_dict(asdict(section.config))}
    for name, section in roles.items():
        entry = {"kind": section.name, **to_dict(asdict(section.config))}
        if name in run.roles:
            resolved["roles"][name] = entry
        else:
            resolved[name] = entry
    _check_roles(run, method)
    return ResolvedRun(run, resolved, model, method, data, roles)


def resolve(recipe: str | Path | dict[str, Any], overrides: list[str] | None = None) -> tuple[RunConfig, dict]:
    """:func:`resolve_run`, as (RunConfig, the resolved mapping saved with the run)."""
    out = resolve_run(recipe, overrides)
    return out.run, out.resolved


def _check_roles(run: RunConfig, method: Section) -> None:
    """Role sections must name roles the method declares and lets the recipe give (clear error otherwise)."""
    roles = {r.name: r for r in method_roles(method)}
    for name in run.role_sections():
        path = name if name in ("student", "critic") and name not in run.roles else f"roles.{name}"
        if name not in roles:
            raise ConfigError(f"{path}: method {run.method.get('name')!r} has no role {name!r}; its roles: "
                              f"{', '.join(roles) or 'none besides the model'}")
        if not roles[name].section:
            raise ConfigError(f"{path}: method {run.method.get('name')!r} builds its {name!r} itself; remove the "
                              "section")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        elif v == {}:           # an empty section is the same as an absent one (older configs lack `roles`)
            continue
        else:
            out[key] = v
    return out


def check_resume_compatible(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """A run directory with checkpoints may only be resumed with the same maths; say which keys differ. ``saved`` is
    re-resolved first, so settings added to the toolkit since the run began compare at their defaults."""
    try:
        saved = resolve_run(saved).resolved
    except (ConfigError, ValueError):       # written by an older toolkit with keys since removed: compare as saved
        pass
    a, b = flatten(saved), flatten(current)
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not resumable(k))
    if changed:
        detail = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:8])
        raise ConfigError(f"output_dir {current.get('output_dir')!r} holds checkpoints of a run with other settings "
                          f"({detail}). Resume with the original settings, or pick a new output_dir=...")
