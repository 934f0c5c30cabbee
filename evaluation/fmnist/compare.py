"""Benchmark B1 for distilled students: each student against the teacher's reference setting, in one run.

    python evaluation/fmnist/compare.py --teacher diffdistill/assets/fmnist/teacher \
        --student dmd2-1step=runs/dmd2-fmnist-1step --student dmd2-4step=runs/dmd2-fmnist-4step --n 10000

Rows: the teacher at ``--teacher-steps`` (DDIM trailing, CFG ``--guidance``) and every student on its own fixed times
(few-step sampler, no CFG: the guidance is distilled in); a unified TCD student (Hyper-SD) at any step count with
``NAME=PATH@STEPS`` (its TCD grid, ``--eta`` for 2+ steps), e.g. ``--student hyper@1=runs/x --student hyper@4=runs/x@4``, each with FID-FMNIST, class accuracy, diversity, NFE,
images/s ratio to the teacher row (measured in this run), and the student's training steps and wall time (read
from its run's metrics.jsonl). ``--teacher-steps 0`` skips the teacher row (the ratio column is then empty).
Writes <out>/<name>.json, <name>.md and one class-row grid per student.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from bench import save_class_grid

from diffdistill.eval.sweep import sample_setting
from diffdistill.inference.generate import export_spec
from diffdistill.train.lineage import export_training
from diffdistill.metrics.fmnist import FMNISTEvaluator
from diffdistill.models.registry import find_export, load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="diffdistill/assets/fmnist/teacher")
    p.add_argument("--teacher-steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=3.0, help="the teacher's standard-form CFG scale")
    p.add_argument("--student", action="append", default=[], metavar="NAME=PATH[@STEPS]",
                   help="a run dir or export dir; @STEPS samples a TCD student at that step count")
    p.add_argument("--eta", type=float, default=None, help="TCD students: eta at 2+ steps (default: the export's)")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--teacher-n", type=int, default=None,
                   help="samples for the teacher row (default --n); fewer keeps a CPU run short, its FID is then "
                        "not comparable and the row says so")
    # 100, not 500: on 2 CPU cores a batch of 500 sampled ~2.3x slower (system time on large activations); sample i
    # does not depend on the batch (diffdistill/inference/noise.py), so scores do not change
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="students")
    p.add_argument("--out", default="evaluation/results/fmnist")
    args = p.parse_args()
    students = []
    for item in args.student:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"--student {item!r}: expected NAME=PATH[@STEPS]")
        path, at, steps = path.partition("@")
        students.append((name, find_export(path), int(steps) if at else None))
    if not students:
        raise SystemExit("pass at least one --student NAME=PATH")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    evaluator = FMNISTEvaluator()
    rows = []
    if args.teacher_steps > 0:
        teacher = load_model(find_export(args.teacher)).eval()
        n_teacher = args.teacher_n or args.n
        spec = export_spec(find_export(args.teacher), teacher, args.teacher_steps, "ode", args.guidance)
        images, labels, seconds = sample_setting(teacher, spec, n_teacher, args.batch, args.seed)
        rows.append({"name": f"teacher {args.teacher_steps} steps", "steps": spec.steps, "nfe": spec.nfe,
                     **evaluator.score(images, labels).as_dict(), "images_per_s": n_teacher / seconds})
    for name, export, steps in students:
        model = load_model(export).eval()
        spec = export_spec(export, model)
        if not (spec.distilled or spec.sampler == "tcd"):
            raise SystemExit(f"{export} is not a few-step student ({spec}); use bench.py for teachers")
        if steps is not None and spec.sampler != "tcd":
            raise SystemExit(f"--student {name}: @STEPS is for TCD (unified) students; {export} samples "
                             f"{spec.sampler} on its own {spec.steps} times")
        spec = export_spec(export, model, steps, eta=args.eta if spec.sampler == "tcd" else None)
        images, labels, seconds = sample_setting(model, spec, args.n, args.batch, args.seed)
        rows.append({"name": name, "steps": spec.steps, "nfe": spec.nfe, **evaluator.score(images, labels).as_dict(),
                     "images_per_s": args.n / seconds, **export_training(export)})
        save_class_grid(images, labels, out / f"{args.name}_{name}.png")
    reference = rows[0]["images_per_s"] if args.teacher_steps > 0 else None
    for row in rows:
        row["speed_ratio_vs_teacher"] = row["images_per_s"] / reference if reference else None
    result = {"teacher": args.teacher, "guidance": args.guidance, "n": args.n, "seed": args.seed, "eta": args.eta,
              "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads", "torch": torch.__version__,
              "rows": rows}
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    teacher_n = f" (teacher row: N = {rows[0]['n']})" if args.teacher_steps > 0 else ""
    lines = [f"{args.name}: N = {args.n}{teacher_n}; teacher CFG {args.guidance} (standard form); students without "
             "CFG; speed ratios measured in the same run", "",
             "| model | steps | NFE | FID-FMNIST | class accuracy | diversity | images/s ratio | train steps "
             "| train time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['speed_ratio_vs_teacher']:.1f}x" if r["speed_ratio_vs_teacher"] else "-"
        wall = f"{r['train_seconds']:.0f} s" if r.get("train_seconds") else "-"
        lines.append(f"| {r['name']} | {r['steps']} | {r['nfe']} | {r['fid_fmnist']:.2f} | {r['class_accuracy']:.3f} | "
                     f"{r['diversity']:.2f} | {ratio} | {r.get('trained_steps') or '-'} | {wall} |")
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / (args.name + '.md')}, {out / (args.name + '.json')} and the grids in {out}")


if __name__ == "__main__":
    main()
