"""A run's recipe: the top-level sections, validated together; building the pieces a run needs.

    model:   {kind: ..., ...}     the network; the teacher for distillation methods (registry: models/registry.py)
    student: {kind: ..., ...}     optional: a student network of its own (default: a copy of the teacher)
    critic:  {kind: ..., ...}     optional: a critic network of its own (default: a copy of the teacher)
    method:  {name: ..., ...}     the training method (registry: methods/__init__.py)
    data:    {name: ..., ...}     the data stream (registry: data.py)
    trainer: {...}                the loop (TrainerConfig)
    output_dir: runs/...
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, from_dict, load_yaml, merge, parse_overrides, to_dict
from ..data import data_config
from ..methods import method_config
from ..models.registry import model_config
from .trainer import TrainerConfig

# Keys that may change when a run resumes: they do not change the maths of the steps already taken (output_dir: a
# run folder that was moved or copied resumes where it now is).
RESUMABLE_KEYS = {"output_dir", "trainer.max_steps", "trainer.log_every", "trainer.sample_every", "trainer.checkpoint_every",
                  "trainer.keep_checkpoints", "trainer.log_with", "trainer.preview_count"}


@dataclass
class RunConfig:
    model: dict[str, Any]
    method: dict[str, Any]
    data: dict[str, Any]
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    output_dir: str = "runs/default"
    student: dict[str, Any] | None = None
    critic: dict[str, Any] | None = None


def resolve(recipe: str | Path | dict[str, Any], overrides: list[str] | None = None) -> tuple[RunConfig, dict]:
    """Load a recipe (path or mapping), apply ``key=value`` overrides, validate every section.

    Returns the RunConfig and the fully resolved config (every default filled in) that is saved with the run.
    """
    raw = load_yaml(recipe) if not isinstance(recipe, dict) else dict(recipe)
    raw = merge(raw, parse_overrides(overrides or []))
    run = from_dict(RunConfig, raw)
    resolved = to_dict(run)
    sections = (("model", model_config), ("student", model_config), ("critic", model_config),
                ("method", method_config), ("data", data_config))
    for section, check in sections:
        if getattr(run, section) is None:
            continue
        key_name = "kind" if check is model_config else "name"
        name, cfg = check(getattr(run, section), section)
        resolved[section] = {key_name: name, **to_dict(asdict(cfg))}
    return run, resolved


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def check_resume_compatible(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """A run directory with checkpoints may only be resumed with the same maths; say which keys differ."""
    a, b = flatten(saved), flatten(current)
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_KEYS)
    if changed:
        detail = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:8])
        raise ConfigError(f"output_dir {current.get('output_dir')!r} holds checkpoints of a run with other settings "
                          f"({detail}). Resume with the original settings, or pick a new output_dir=...")
