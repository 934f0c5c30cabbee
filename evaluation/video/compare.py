"""Benchmark B2 for video students side by side: causal (streaming) ones at chosen steps per chunk, with or without
first-frame enhancement, and bidirectional few-step ones (the whole clip at once), against the teacher's best
setting, in one run.

    python evaluation/video/compare.py --student asd@1=runs/video-asd@1 --student asd@1*=runs/video-asd@1+4 \
        --student sf-1step=runs/video-self-forcing-1step --n 200 --name asd_b2

``NAME=PATH[@STEPS][+FFE]``: a student's export (or run dir) sampled through the one sampling path (a causal one chunk
by chunk with its KV cache) with STEPS steps (per chunk; a rung of its ladder; a student without a ladder at fewer
steps than it was trained for takes the evenly spaced subset of its own times, which the table marks as off its
times) and the first chunk on FFE steps (first-frame enhancement, ASD arXiv:2511.01419 sec. 3.3; +0: none; causal
students only). Rows: the teacher at ``--teacher-steps`` Euler steps with CFG ``--guidance`` (its best
per-frame FID setting, evaluation/results/video/teacher.md) and every student, each with per-frame FID, FD motion,
FD track, class accuracy, consistency (diffdistill/metrics/video.py), NFE per chunk, frames/s and its ratio to the
teacher's (measured in this run) and the student's training steps and wall time, earlier stages included.
Writes <out>/<name>.json, <name>.md and a GIF per row.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
from pathlib import Path

import torch

from diffdistill.data import FMNIST_CLASSES
from diffdistill.eval.sweep import sample_setting
from diffdistill.inference.generate import export_spec
from diffdistill.inference.spec import SamplingSpec
from diffdistill.metrics.video import VideoEvaluator
from diffdistill.models.registry import find_export, load_model
from diffdistill.train.lineage import export_training
from diffdistill.visual import save_video

COLUMNS = [("fid_frames", "per-frame FID", ".2f"), ("fd_motion", "FD motion", ".2f"), ("fd_track", "FD track", ".3f"),
           ("class_accuracy", "class accuracy", ".3f"), ("consistency", "consistency", ".3f")]


def parse_student(item: str) -> tuple[str, Path, int | None, int | None]:
    """``NAME=PATH[@STEPS][+FFE]`` -> (name, export dir, steps or None, first-chunk steps or None)."""
    name, sep, rest = item.partition("=")
    match = re.fullmatch(r"(?P<path>.+?)(@(?P<steps>\d+))?(\+(?P<ffe>\d+))?", rest)
    if not sep or not name or match is None:
        raise SystemExit(f"--student {item!r}: expected NAME=PATH[@STEPS][+FFE]")
    steps, ffe = match["steps"], match["ffe"]
    return name, find_export(match["path"]), int(steps) if steps else None, int(ffe) if ffe else None


def student_row(name: str, export: Path, steps: int | None, ffe: int | None, args: argparse.Namespace,
                evaluator: VideoEvaluator, out: Path) -> dict:
    model = load_model(export).eval()
    own = export_spec(export, model)
    spec = export_spec(export, model, steps, ffe=ffe)
    off = own.off_schedule(steps)
    row = _scored(name, model, spec, args, evaluator, out)
    return {**row, "first_chunk_steps": spec.first_chunk_steps, "times": list(spec.times),
            "first_chunk_times": list(spec.first_chunk_times), "off_schedule": off is not None,
            **export_training(export)}


def _scored(name: str, model, spec: SamplingSpec, args: argparse.Namespace, evaluator: VideoEvaluator,
            out: Path) -> dict:
    clips, labels, _ = sample_setting(model, spec, args.n, args.batch, args.seed)
    _, _, seconds = sample_setting(model, spec, args.time_n, args.batch, args.seed + 1)
    save_video(clips[:20], out / f"{args.name}_{name.replace('*', 'x')}.gif", labels=labels[:20],
               class_names=list(FMNIST_CLASSES))
    return {"name": name, "steps": spec.steps, "nfe": spec.nfe, **evaluator.score(clips, labels).as_dict(),
            "frames_per_s": args.time_n * clips.shape[1] / seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", action="append", default=[], metavar="NAME=PATH[@STEPS][+FFE]")
    p.add_argument("--teacher", default="diffdistill/assets/moving_fmnist/teacher")
    p.add_argument("--teacher-steps", type=int, default=16)
    p.add_argument("--guidance", type=float, default=3.0, help="the teacher's CFG (standard form)")
    p.add_argument("--n", type=int, default=200, help="clips per row")
    p.add_argument("--time-n", type=int, default=50, help="clips timed per row for frames/s")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="causal_students")
    p.add_argument("--out", default="evaluation/results/video")
    args = p.parse_args()
    students = [parse_student(item) for item in args.student]
    if not students:
        raise SystemExit("pass at least one --student NAME=PATH[@STEPS][+FFE]")
    for name, export, steps, ffe in students:     # every setting checked before an hour of scoring, not during it
        try:
            export_spec(export, load_model(export), steps, ffe=ffe)
        except ValueError as err:
            raise SystemExit(f"--student {name}: {err}") from err
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    evaluator = VideoEvaluator()
    teacher_dir = find_export(args.teacher)
    teacher = load_model(teacher_dir).eval()
    teacher_spec = SamplingSpec("ode", tuple(float(t) for t in teacher.schedule.step_grid(args.teacher_steps)),
                                args.guidance)
    rows = [_scored(f"teacher {args.teacher_steps} steps", teacher, teacher_spec, args, evaluator, out)]
    rows += [student_row(*student, args, evaluator, out) for student in students]
    for row in rows:
        row["speed_ratio_vs_teacher"] = row["frames_per_s"] / rows[0]["frames_per_s"]
    result = {"teacher": str(teacher_dir), "teacher_steps": args.teacher_steps, "guidance": args.guidance,
              "n": args.n, "time_n": args.time_n, "seed": args.seed, "torch": torch.__version__,
              "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads", "rows": rows}
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    write_markdown(result, out / f"{args.name}.md", args.name)


def write_markdown(result: dict, path: Path, name: str) -> None:
    lines = [f"{name}: N = {result['n']} clips per row, seed {result['seed']}; teacher CFG {result['guidance']} "
             f"(standard form), students without CFG; frames/s over {result['time_n']} clips, ratios measured in "
             f"this run ({result['machine']})", "",
             "| model | steps/chunk | first chunk | " + " | ".join(c[1] for c in COLUMNS)
             + " | frames/s ratio | train steps | train time |",
             "|---|---:|---:|" + "---:|" * len(COLUMNS) + "---:|---:|---:|"]
    for r in result["rows"]:
        steps = f"{r['steps']}{' (off its times)' if r.get('off_schedule') else ''}"
        wall = f"{r['train_seconds']:.0f} s" if r.get("train_seconds") else "-"
        lines.append(f"| {r['name']} | {steps} | {r.get('first_chunk_steps', r['steps'])} | "
                     + " | ".join(format(r[k], f) for k, _, f in COLUMNS)
                     + f" | {r['speed_ratio_vs_teacher']:.1f}x | {r.get('trained_steps') or '-'} | {wall} |")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {path} and {path.with_suffix('.json')}")


if __name__ == "__main__":
    main()
