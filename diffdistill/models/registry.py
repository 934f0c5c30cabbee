"""Model registry: ``kind`` name -> (config dataclass, wrapper class); build, export and reload wrapped models.

An exported model is a folder holding ``diffdistill.json`` (the model's config plus whatever the caller adds, e.g.
the resolved run config and the sampling schedule) and its weights: ``model.safetensors`` for our own networks, or
the diffusers layout (``unet/``, ``transformer/``, ``scheduler/``) written by the adapter so that diffusers can load
it directly. Weights are only ever read through safetensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..config import ConfigError, Section, registry_entry, to_dict, typed_section
from ..files import load_safetensors
from .base import DiffusionModel

# kind -> (module, config class, wrapper class). Modules are imported on use, so diffusers stays lazy.
MODEL_KINDS: dict[str, tuple[str, str, str]] = {
    "toy_gmm": ("diffdistill.models.toy", "MixtureConfig", "GaussianMixture"),
    "mlp": ("diffdistill.models.toy", "MLPConfig", "MLPDenoiser"),
    "unet": ("diffdistill.models.diffusers", "UNetConfig", "DiffusersUNet"),
    "wan": ("diffdistill.models.diffusers", "WanConfig", "DiffusersWan"),
    "experts": ("diffdistill.models.experts", "ExpertsConfig", "Experts"),
}
EXPORT_META = "diffdistill.json"
WEIGHTS = "model.safetensors"


def _entry(kind: str, path: str) -> tuple[type, type]:
    return registry_entry(MODEL_KINDS, "kind", kind, path)


@dataclass
class ExportSource:
    """A model section that starts from an export folder of one of our own networks."""

    pretrained: str


def _export_source(spec: dict[str, Any], path: str) -> str | None:
    """``pretrained`` of one of our own networks (kinds without a diffusers loader): an export folder to start from,
    e.g. a trained toy MLP as the DMD2 teacher that the student and critic are copied from (DMD2 initialises both
    from the teacher). The architecture then comes from the export, so no other field may be given."""
    if not isinstance(spec, dict) or spec.get("pretrained") is None or spec.get("kind") not in MODEL_KINDS:
        return None
    cfg_cls, _ = _entry(spec["kind"], path)
    if "pretrained" in {f.name for f in fields(cfg_cls)}:     # adapters: their own config loads diffusers folders
        return None
    extra = sorted(set(spec) - {"kind", "pretrained"})
    if extra:
        raise ConfigError(f"{path}: with `pretrained` the architecture comes from the export; remove {extra}")
    return str(spec["pretrained"])


def model_config(spec: dict[str, Any], path: str = "model") -> tuple[str, Any]:
    """Validate a ``{kind: ..., **fields}`` mapping; returns (kind, config dataclass)."""
    source = _export_source(spec, path)
    if source is not None:
        return spec["kind"], ExportSource(source)
    return typed_section(MODEL_KINDS, "kind", spec, path)


def build_model(spec: dict[str, Any], path: str = "model") -> DiffusionModel:
    """Build (or load: adapters' ``pretrained`` diffusers folders, our networks' ``pretrained`` exports) the wrapped
    model a recipe section describes."""
    return build_section(Section(*model_config(spec, path)), path)


def build_section(section: Section, path: str = "model") -> DiffusionModel:
    """The model of a validated section (``train.recipe.resolve_run`` validates each recipe section once)."""
    if isinstance(section.config, ExportSource):
        directory = find_export(section.config.pretrained)
        kind = read_export_meta(directory)["model"].get("kind")
        if kind != section.name:
            raise ConfigError(f"{path}.pretrained: {section.config.pretrained!r} holds a {kind!r} model, not "
                              f"{section.name!r}; set {path}.kind: {kind}")
        return load_model(directory)
    _, cls = _entry(section.name, path)
    return cls(section.config)


def save_model(model: DiffusionModel, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Export ``model`` to ``directory`` (weights + ``diffdistill.json`` with its config and ``extra``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    writer = getattr(model, "save_pretrained", None)
    if writer is not None:      # adapters: the diffusers layout, with the scheduler the sampling settings need
        writer(directory, (extra or {}).get("sampling"))
    else:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, directory / WEIGHTS, metadata={"diffdistill": json.dumps(model.export_config())})
    meta = {"format": 1, "model": to_dict(model.export_config()), **(extra or {})}
    (directory / EXPORT_META).write_text(json.dumps(meta, indent=2))
    return directory


def read_export_meta(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    meta_path = directory / EXPORT_META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{str(directory)!r} is not an exported diffdistill model (no {EXPORT_META}); pass the "
                                "`export/` folder of a run or a folder written by `save_model`")
    try:
        return json.loads(meta_path.read_text())
    except ValueError as err:
        raise ValueError(f"{meta_path} is not valid JSON ({err}); rerun `diffdistill export RUN` to rewrite it") from None


def find_export(path: str | Path) -> Path:
    """An export folder from a run directory (its ``export/``) or from the export folder itself."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist; pass a run directory (with export/) or an "
                                "export directory written by `diffdistill train` / `diffdistill export`")
    return p / "export" if (p / "export").is_dir() else p


def load_model(directory: str | Path) -> DiffusionModel:
    """Rebuild an exported model from its folder (the inverse of :func:`save_model`)."""
    directory = Path(directory)
    spec = dict(read_export_meta(directory)["model"])
    cfg_cls, cls = _entry(spec["kind"], "model")
    names = {f.name for f in fields(cfg_cls)}
    if "pretrained" in names:    # adapters (and experts) load their own folders from here
        spec.update(pretrained=str(directory), **({"config": None} if "config" in names else {}))
    model = build_model(spec)
    if (directory / WEIGHTS).is_file():
        weights = load_safetensors(directory / WEIGHTS, "rerun `diffdistill export RUN` to rewrite the export from the "
                                   "run's newest intact checkpoint")
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise ValueError(f"weights in {directory / WEIGHTS} do not fit {spec['kind']}: missing {missing}, "
                             f"unexpected {unexpected}")
    return model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def merge_lora(run: str | Path, weight: float, out: str | Path) -> Path:
    """Re-export a LoRA run's student with its adapters merged at ``weight`` (Hyper-SD merges its feedback LoRA
    at a chosen weight to trade reward against drift, arXiv:2404.13686 sec. 3.2): the run's base network (its
    ``student:`` section, else ``model:``) plus ``weight`` x the LoRA its export holds. Writes ``out`` like an export
    (merged weights, the LoRA scaled, the same sampling) and returns it."""
    from .base import LoraConfig, role_copy, scale_lora

    export = find_export(run)
    meta = read_export_meta(export)
    config = meta.get("run_config") or {}
    lora = dict((config.get("method") or {}).get("student_lora") or {})
    if not lora.get("rank"):
        raise ValueError(f"{str(run)!r} did not train a LoRA student (method.student_lora.rank is 0 or missing): "
                         "there is nothing to merge at another weight")
    base = build_model(config.get("student") or config["model"])
    student = role_copy(base, LoraConfig(**{**lora, "init_from": str(export)}))
    scale_lora(student.lora_network(), weight)
    return save_model(student, out, {k: v for k, v in meta.items() if k not in ("format", "model")}
                      | {"lora_weight": weight, "lora_source": str(export)})

