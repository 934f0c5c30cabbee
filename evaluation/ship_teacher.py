"""Ship a trained benchmark teacher: copy a run's export into diffdistill/assets/<benchmark>/teacher/ with a model card.

    diffdistill train recipes/fmnist/teacher.yaml trainer.max_steps=3000     # (or resume/extend an existing run)
    python evaluation/ship_teacher.py runs/fmnist-teacher --command "<the train command you ran>"          # B1
    python evaluation/ship_teacher.py runs/video-teacher --benchmark moving_fmnist --command "..."         # B2

A run that fine-tunes the shipped teacher (``model.pretrained: diffdistill/assets/fmnist/teacher``, e.g.
recipes/fmnist/teacher_offset_finetune.yaml) is shipped as a further stage: the card keeps the earlier stages.

The card records the command, steps, wall time, hardware, the final loss and where the training log went
(evaluation/results/<fmnist | video>/teacher_train_log.jsonl).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path

import torch

from diffdistill.train.lineage import logged_seconds
from diffdistill.models.registry import count_parameters, load_model, read_export_meta


ASSETS = Path(__file__).resolve().parents[1] / "diffdistill" / "assets"
BENCHMARKS = {   # asset folder -> (what the card says, results folder)
    "fmnist": ("Fashion-MNIST teacher for benchmark B1: diffusers UNet2DConditionModel, eps-prediction, SD "
               "scaled-linear DDPM schedule, learned class tokens (+ null token for CFG)", "fmnist"),
    "moving_fmnist": ("Moving Fashion-MNIST video teacher for benchmark B2: diffusers WanTransformer3DModel "
                      "(bidirectional), rectified flow with time shift 3, learned class tokens in its text stream "
                      "(+ null token for CFG); 8 frames of 32x32 grey pixels, patch (1, 4, 4)", "video"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="the run directory (with export/ and metrics.jsonl)")
    p.add_argument("--command", required=True, help="the exact command that trained it")
    p.add_argument("--benchmark", choices=sorted(BENCHMARKS), default="fmnist")
    p.add_argument("--attach", nargs="*", default=[], help="JSON files recorded in the card under their file stem "
                   "(e.g. the step-time measurements that chose the architecture)")
    p.add_argument("--log-out", default=None, help="where the training log goes (default: the benchmark's results)")
    args = p.parse_args()
    what, results = BENCHMARKS[args.benchmark]
    args.log_out = args.log_out or f"evaluation/results/{results}/teacher_train_log.jsonl"
    run = Path(args.run)
    meta = read_export_meta(run / "export")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    target = ASSETS / args.benchmark / "teacher"
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
    if args.benchmark == "fmnist":
        stage["noise_offset"] = meta["run_config"]["method"].get("noise_offset", 0.0)
    stages = earlier + [stage]
    card = {"what": what,
            "stages": stages, "total_steps": sum(s["trained_steps"] or 0 for s in stages),
            "total_wall_time_s": round(sum(s["wall_time_s"] for s in stages), 1), **stage}
    for path in map(Path, args.attach):
        card.setdefault("attached", {})[path.stem] = {"file": str(path), **json.loads(path.read_text())}
    (target / "card.json").write_text(json.dumps(card, indent=2))
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
