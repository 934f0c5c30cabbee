"""Ship a distilled Fashion-MNIST student (the demo's default): copy a run's export into
diffdistill/assets/fmnist/<name>/ with a model card that records how it was made and how it scores.

    diffdistill train recipes/dmd2/fmnist_1step.yaml            # stopped at some checkpoint: diffdistill export RUN
    python evaluation/fmnist/compare.py --teacher-steps 0 --student dmd2-1step=RUN --n 1000 --out RUN/eval
    python evaluation/fmnist/ship_student.py RUN --name dmd2_1step --scores RUN/eval/scores.json --command "..."
    (a stage started with trainer.init_from: the export's lineage adds the earlier stages' steps and time; for exports
    written before the trainer recorded it, pass --earlier-steps/--earlier-seconds)
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path

import torch

from diffdistill.train.lineage import logged_seconds, total_training
from diffdistill.metrics.fmnist import ASSETS
from diffdistill.models.registry import count_parameters, load_model, read_export_meta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="the run directory (with export/ and metrics.jsonl)")
    p.add_argument("--name", required=True, help="folder under diffdistill/assets/fmnist/, e.g. dmd2_1step")
    p.add_argument("--scores", required=True, help="compare.py's JSON for this export")
    p.add_argument("--command", required=True, help="the exact commands that trained and exported it")
    p.add_argument("--earlier-steps", type=int, default=0,
                   help="training steps of earlier stages an export without a recorded lineage started from")
    p.add_argument("--earlier-seconds", type=float, default=0.0, help="their training wall time in seconds")
    p.add_argument("--log-out", help="where the training log is committed "
                                     "(default evaluation/results/fmnist/<name>_train_log.jsonl)")
    args = p.parse_args()
    run, target = Path(args.run), ASSETS / args.name
    log_out = args.log_out or f"evaluation/results/fmnist/{args.name}_train_log.jsonl"
    meta = read_export_meta(run / "export")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["step"] <= meta.get("trained_steps", r["step"])]     # up to the exported step
    if meta.get("train_seconds") is None:            # exports from before the trainer recorded it
        meta["train_seconds"] = round(logged_seconds(rows), 1)
    if args.earlier_steps or args.earlier_seconds:
        meta["earlier_stages"] = [*meta.get("earlier_stages", []), {"run": "given on the command line",
                                  "steps": args.earlier_steps, "seconds": args.earlier_seconds}]
    steps, seconds = total_training(meta)
    scores = json.loads(Path(args.scores).read_text())
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(run / "export", target, ignore=shutil.ignore_patterns("samples-*"))
    Path(log_out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    method = meta["run_config"]["method"]
    card = {"what": f"Fashion-MNIST {method['name']} student of diffdistill/assets/fmnist/teacher "
                    f"({len(method.get('student_times', [1]))} step(s)), for benchmark B1 and the demo",
            "command": args.command, "trained_steps": steps, "wall_time_s": seconds,
            "earlier_stages": meta.get("earlier_stages", []),
            "parameters": count_parameters(load_model(target)),
            "hardware": f"{platform.machine()} CPU (2 cores), torch {torch.__version__}",
            "batch_size": meta["run_config"]["trainer"]["batch_size"], "training_log": log_out,
            "scores": {k: v for k, v in scores.items() if k != "rows"} | {"rows": scores["rows"]}}
    (target / "card.json").write_text(json.dumps(card, indent=2))
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
