"""A step-count sweep of one exported model: the loop of the benchmark tables (evaluation/fmnist/bench.py for B1
images, evaluation/video/bench.py for B2 clips).

Each setting samples ``n`` class-balanced samples through the toolkit's one sampling path (inference/generate.py:
the same samples `diffdistill sample` and `eval` draw for the seed), scores them and records NFE, wall time and
throughput. The setting with the most steps runs first, so every later row has its speed ratio to it from the same
run, and a sweep cut short still holds the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..inference.generate import generate
from ..inference.spec import SamplingSpec
from ..models.base import DiffusionModel

Score = Callable[[Tensor, Tensor], dict]
AfterSetting = Callable[[int, Tensor, Tensor, list[dict]], None]


def sample_setting(model: DiffusionModel, spec: SamplingSpec, n: int, batch: int, seed: int,
                   num_classes: int = 10) -> tuple[Tensor, Tensor, float]:
    """Class-balanced samples (labels 0..C-1 repeating) of ``spec`` and the sampling wall time in seconds, through the
    toolkit's one sampling path (so sample i is the one `diffdistill eval` and the demo draw for this seed)."""
    return generate(model, replace(spec, num_classes=num_classes), n, seed, batch_size=batch)


def sweep_order(steps: list[int]) -> list[int]:
    """The most steps first (the speed reference), then the others in the order given."""
    reference = max(steps)
    return [reference] + [s for s in steps if s != reference]


def step_sweep(model: DiffusionModel, steps: list[int], n: int, *, guidance: float, sampler: str = "ode",
               spacing: str = "trailing", batch: int = 100, seed: int = 0, num_classes: int = 10,
               score: Score, after: AfterSetting, unit: str = "images") -> list[dict]:
    """Sample and ``score(samples, labels)`` at every step count; ``after(steps, samples, labels, rows)`` runs after
    each setting (write tables, grids: nothing is lost if the sweep is cut). ``unit`` names the throughput column:
    ``images`` counts samples, ``frames`` counts samples x frames. Returns the rows sorted by steps."""
    if not steps or min(steps) < 1:
        raise ValueError(f"--steps must be positive step counts, got {steps}")
    rows: list[dict] = []
    for count in tqdm(sweep_order(steps), desc="settings"):
        spec = SamplingSpec(sampler, tuple(float(t) for t in model.schedule.step_grid(count, spacing)), guidance,
                            spacing=spacing)
        samples, labels, seconds = sample_setting(model, spec, n, batch, seed, num_classes)
        per_sample = samples.shape[1] if unit == "frames" else 1
        rows.append({"steps": count, "nfe": spec.nfe, **score(samples, labels), "seconds": seconds,
                     f"{unit}_per_s": n * per_sample / seconds})
        rows.sort(key=lambda r: r["steps"])
        for row in rows:
            row["speed_ratio_vs_reference"] = row[f"{unit}_per_s"] / rows[-1][f"{unit}_per_s"]
        after(count, samples, labels, rows)
    return rows


def sweep_header(model_dir: str, trained_steps: int | None, n: int, guidance: float, sampler: str, spacing: str,
                 seed: int) -> dict:
    """The protocol every sweep records next to its rows."""
    import platform

    return {"model": model_dir, "trained_steps": trained_steps, "n": n, "guidance": guidance,
            "cfg_form": "uncond + w (cond - uncond)", "sampler": sampler, "spacing": spacing, "seed": seed,
            "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads", "torch": torch.__version__}
