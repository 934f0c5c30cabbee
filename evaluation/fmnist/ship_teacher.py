"""Ship a trained Fashion-MNIST teacher: copy a run's export into diffdistill/assets/fmnist/teacher/ with a model card.

    diffdistill train recipes/fmnist/teacher.yaml trainer.max_steps=3000     # (or resume/extend an existing run)
    python evaluation/fmnist/ship_teacher.py runs/fmnist-teacher --command "<the train command you ran>"

A run that fine-tunes the shipped teacher (``model.pretrained: diffdistill/assets/fmnist/teacher``, e.g.
recipes/fmnist/teacher_offset_finetune.yaml) is shipped as a further stage: the card keeps the earlier stages.

The card records the command, steps, wall time, hardware, the final loss and where the training log went
(evaluation/results/fmnist/teacher_train_log.jsonl).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path

import torch

from diffdistill.train.lineage import logged_seconds
from diffdistill.metrics.fmnist import ASSETS
from diffdistill.models.registry import count_parameters, load_model, read_export_meta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="the run directory (with export/ and metrics.jsonl)")
    p.add_argument("--command", required=True, help="the exact command that trained it")
    p.add_argument("--log-out", default="evaluation/results/fmnist/teacher_train_log.jsonl")
    args = p.parse_args()
    run = Path(args.run)
    meta = read_export_meta(run / "export")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    target = ASSETS / "teacher"
    pretrained = meta["run_config"]["model"].get("pretrained")
    earlier = []
    if pretrained and Path(pretrained).resolve() == target.resolve() and (target / "card.json").is_file():
        previous = json.loads((target / "card.json").read_text())
        earlier = previous.pop("stages", None) or [previous]
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(run / "export", target, ignore=shutil.ignore_patterns("samples-*"))
    Path(args.log_out).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "metrics.jsonl", args.log_out)
    model = load_model(target)
    stage = {"command": args.command, "trained_steps": meta.get("trained_steps"),
            "wall_time_s": round(logged_seconds(rows), 1), "final_loss": rows[-1].get("model/denoise"),
            "parameters": count_parameters(model), "hardware": f"{platform.machine()} CPU (2 cores), torch {torch.__version__}",
            "batch_size": meta["run_config"]["trainer"]["batch_size"], "training_log": args.log_out,
            "note": "wall time summed over the run's segments (time_s restarts when a run resumes); the steps "
                    "between a segment's last log line and its kill are not counted"}
    stage["noise_offset"] = meta["run_config"]["method"].get("noise_offset", 0.0)
    stages = earlier + [stage]
    card = {"what": "Fashion-MNIST teacher for benchmark B1: diffusers UNet2DConditionModel, eps-prediction, SD "
                    "scaled-linear DDPM schedule, learned class tokens (+ null token for CFG)",
            "stages": stages, "total_steps": sum(s["trained_steps"] or 0 for s in stages),
            "total_wall_time_s": round(sum(s["wall_time_s"] for s in stages), 1), **stage}
    (target / "card.json").write_text(json.dumps(card, indent=2))
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
