"""Loading an exported toy model for the B3 scripts: the model, its export metadata and the mixture it learned."""

from __future__ import annotations

from pathlib import Path

import torch

from diffdistill.data import trained_mixture
from diffdistill.models.base import DiffusionModel
from diffdistill.models.registry import find_export, load_model, read_export_meta
from diffdistill.models.toy import MixtureConfig


def load_toy_export(run: str) -> tuple[Path, dict, DiffusionModel, MixtureConfig]:
    """(export folder, its diffdistill.json, the model in eval mode, the training mixture) on one CPU thread."""
    torch.set_num_threads(1)
    directory = find_export(run)
    meta = read_export_meta(directory)
    mixture = trained_mixture(meta)
    if mixture is None:
        raise SystemExit(f"{directory} was not trained on the toy mixture")
    return directory, meta, load_model(directory).eval(), mixture
