"""The students a demo or a leaderboard can offer: every export under some folders, described from its own metadata.

An export is a folder with ``diffdistill.json`` (models/registry.py); its ``run_config`` names the method that trained
it and its ``sampling`` entry how it samples (inference/spec.py). :func:`find_exports` walks the given roots (the
shipped ``diffdistill/assets`` and, in a checkout, ``runs/``) and returns one :class:`CatalogEntry` per export, with
the medium it serves (image or video, so each demo tab lists only what it can draw) and the step counts it samples
on its own distribution.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

ASSETS = Path(__file__).resolve().parents[1] / "assets"
IMAGE_KINDS, VIDEO_KINDS = ("unet",), ("wan",)
TCD_STEP_CHOICES = (1, 2, 4, 8)      # a unified Hyper-SD student samples any of these on its TCD grid

Medium = Literal["image", "video", "other"]


@dataclass(frozen=True)
class CatalogEntry:
    """One export: ``name`` (its folder relative to the root it was found under), ``method`` (``teacher``,
    ``dmd2``, ...), ``medium``, its default ``steps`` and every step count it serves (``step_choices``), and whether it
    streams chunk by chunk (``causal``)."""

    name: str
    path: Path
    method: str
    medium: Medium
    steps: int
    step_choices: tuple[int, ...]
    causal: bool

    @property
    def is_teacher(self) -> bool:
        return self.method == "teacher"

    @property
    def label(self) -> str:
        """What a picker shows: method, step counts and where it lives."""
        steps = "/".join(str(s) for s in self.step_choices)
        return f"{self.method} ({steps} steps) - {self.name}"


def describe_export(path: Path, name: str | None = None) -> CatalogEntry | None:
    """The entry of export folder ``path`` (None: no ``diffdistill.json`` there, or not one of our models)."""
    meta_path = path / "diffdistill.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    model = meta.get("model", {})
    kind = model.get("kind")
    if kind == "experts":                 # Phased DMD's experts: the medium of the networks inside
        kind = (model.get("experts") or [{}])[0].get("kind")
    medium: Medium = "image" if kind in IMAGE_KINDS else "video" if kind in VIDEO_KINDS else "other"
    sampling = meta.get("sampling", {})
    steps = len(sampling.get("times") or []) or int(sampling.get("steps", 0))
    ladder = tuple(len(r) for r in sampling.get("ladder") or ())
    sampler = sampling.get("sampler", "ode")
    if ladder:
        choices = ladder
    elif sampler == "tcd":
        choices = tuple(sorted({*TCD_STEP_CHOICES, steps}))
    else:
        choices = (steps,)
    method = meta.get("run_config", {}).get("method", {}).get("name", "unknown")
    return CatalogEntry(name or path.name, path, method, medium, steps, choices,
                        bool(sampling.get("chunk_frames")))


def find_exports(roots: Iterable[str | Path]) -> list[CatalogEntry]:
    """Every export under ``roots`` (sorted by medium, method and name; roots that do not exist are skipped). Only
    folders with ``diffdistill.json`` count, and neither a run's checkpoints nor the parts of an export (Phased
    DMD's experts) are exports of their own."""
    entries = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for meta in sorted(root.rglob("diffdistill.json")):
            if "checkpoints" in meta.relative_to(root).parts or any(
                    (parent / "diffdistill.json").is_file() for parent in meta.parent.parents):
                continue            # a checkpoint, or a part of another export (Phased DMD's experts)
            entry = describe_export(meta.parent, str(meta.parent.relative_to(root.parent)))
            if entry is not None:
                entries.append(entry)
    return sorted(entries, key=lambda e: (e.medium, e.is_teacher, e.method, e.name))


def default_roots() -> list[Path]:
    """The shipped assets and, when run from a checkout, its ``runs/`` folder (committed exports live there)."""
    return [ASSETS, Path("runs")]
