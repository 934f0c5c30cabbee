"""How much training a model took, across the stages that made it.

A run started with ``trainer.init_from`` continues another run's weights (DMD2's second stages, a teacher's
fine-tune), and a run whose trained network starts from one of our exports (a ``student: {pretrained: <export>}``
section) continues that export's training; either way its own step count and clock undercount what the model cost.
Each checkpoint therefore records ``train_seconds`` (this run's wall time, summed over resumes) and ``lineage``: one
entry per earlier stage with its run, checkpoint, steps and seconds. The export carries both, so benchmark tables
report whole-model totals.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .checkpoint import STATE_FILE


def logged_seconds(rows: list[dict[str, Any]]) -> float:
    """Wall time of a ``metrics.jsonl`` log whose ``time_s`` restarts from 0 at every resume: add the launches up.
    The steps between a launch's last log line and its stop are not counted."""
    total, last = 0.0, 0.0
    for row in rows:
        if row["time_s"] < last:
            total += last
        last = row["time_s"]
    return total + last


def run_log_seconds(run_dir: str | Path, up_to_step: int | None = None) -> float | None:
    """A run's training wall time from its ``metrics.jsonl`` up to ``up_to_step`` (None: no log or no lines)."""
    log = Path(run_dir) / "metrics.jsonl"
    if not log.is_file():
        return None
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if up_to_step is None or r["step"] <= up_to_step]
    return round(logged_seconds(rows), 1) if rows else None


def stages_before(source: str | Path) -> list[dict[str, Any]]:
    """The stages a run started from checkpoint ``source`` builds on: the source's own lineage, then the source.
    Checkpoints written before ``train_seconds`` was recorded fall back to their run's ``metrics.jsonl``."""
    source = Path(source)
    state = json.loads((source / STATE_FILE).read_text())
    run_dir = source.parent.parent          # run_dir/checkpoints/step-N
    seconds = state.get("train_seconds")
    if seconds is None:
        seconds = run_log_seconds(run_dir, state["step"])
    return [*state.get("lineage", []),
            {"run": str(run_dir), "checkpoint": source.name, "steps": state["step"], "seconds": seconds}]


def stages_of_export(directory: str | Path) -> list[dict[str, Any]]:
    """The stages a network started from export ``directory`` builds on: the export's own lineage, then the export's
    run (its ``trained_steps`` and ``train_seconds``). Empty for a folder that is not one of our trained exports
    (a diffusers pipeline, a hub model): its training is not ours to count."""
    meta_path = Path(directory) / "diffdistill.json"
    if not meta_path.is_file():
        return []
    meta = json.loads(meta_path.read_text())
    if meta.get("trained_steps") is None:
        return []
    return [*meta.get("earlier_stages", []),
            {"run": str(directory), "checkpoint": "export", "steps": meta["trained_steps"],
             "seconds": meta.get("train_seconds")}]


def stages_of_ode_pairs(directory: str | Path) -> list[dict[str, Any]]:
    """The teacher trajectories in ``directory`` (``diffdistill ode-pairs``) as a stage of the student that regresses on
    them: no training steps, the generation's wall time (CausVid, arXiv:2412.07772, sec. 3.3: the pairs are part of
    the causal student's initialisation). Empty for a folder written before the time was recorded."""
    from ..data.ode_pairs import META

    meta_path = Path(directory) / META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta.get("generation_seconds") is None:
        return []
    return [{"run": str(directory), "checkpoint": "ode-pairs", "steps": 0, "seconds": meta["generation_seconds"]}]


def total_training(meta: dict[str, Any]) -> tuple[int | None, float | None]:
    """(steps, seconds) of an export's whole lineage: its own run plus every earlier stage.
    Seconds is None when any stage's time is unknown, rather than an undercount."""
    stages = meta.get("earlier_stages", [])
    steps = meta.get("trained_steps")
    if steps is not None:
        steps += sum(s["steps"] for s in stages)
    parts = [meta.get("train_seconds"), *(s["seconds"] for s in stages)]
    seconds = None if any(p is None for p in parts) else round(sum(parts), 1)
    return steps, seconds


def export_training(directory: str | Path) -> dict[str, Any]:
    """Training steps and wall time of the model in export ``directory``, all stages added up, for benchmark tables.
    Exports written before the trainer recorded ``train_seconds`` fall back to their run's metrics.jsonl."""
    directory = Path(directory)
    meta_path = directory / "diffdistill.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta.get("train_seconds") is None:
        meta = meta | {"train_seconds": run_log_seconds(directory.parent, meta.get("trained_steps"))}
    steps, seconds = total_training(meta)
    return {"trained_steps": steps, "train_seconds": seconds, "stages": 1 + len(meta.get("earlier_stages", []))}
