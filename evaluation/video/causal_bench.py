"""Benchmark B2 for a causal (streaming) student: its scores beside the teacher's best setting, the streaming speed-up,
first-chunk latency, and drift when it rolls past the length it was trained on.

    python evaluation/video/causal_bench.py runs/video-self-forcing --teacher diffdistill/assets/moving_fmnist/teacher \
        --teacher-steps 16 --n 200 --lengths 16 32 --name self_forcing

In one run, on the same class-balanced seeds: the teacher at ``--teacher-steps`` Euler steps with CFG (its best
per-frame FID setting in evaluation/results/video/teacher.md) and the student through the one sampling path
(chunk by chunk with its KV cache); per-frame FID, FD motion, FD track, class accuracy and consistency
(diffdistill/metrics/video.py). Speed: frames/s of each over the same clips (``--time-n``), and the student's
first-chunk latency at batch 1 (median of ``--repeats``). Drift: the student streams ``--lengths`` frames with a
rolling cache of ``--window`` chunks (0: the trained clip's chunk count); per-frame FID and class accuracy by frame
index, plotted. Writes <out>/<name>.json, <name>.md, <name>_drift.png and a GIF of the longest clips.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from diffdistill.data import FMNIST_CLASSES
from diffdistill.eval.sweep import sample_setting, sweep_header
from diffdistill.inference.generate import export_spec, stream
from diffdistill.inference.spec import SamplingSpec
from diffdistill.metrics.frechet import FeatureStats, frechet_distance
from diffdistill.metrics.video import VideoEvaluator
from diffdistill.models.registry import find_export, load_model, read_export_meta
from diffdistill.visual import save_video

COLUMNS = [("fid_frames", "per-frame FID", ".2f"), ("fd_motion", "FD motion", ".2f"), ("fd_track", "FD track", ".3f"),
           ("class_accuracy", "class accuracy", ".3f"), ("consistency", "consistency", ".3f")]


def load(path: str):
    directory = find_export(path)
    return directory, load_model(directory).eval()


def by_frame(evaluator: VideoEvaluator, clips: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    """Per-frame FID and class accuracy at every frame index of ``clips`` [N, T, 1, H, W]."""
    feats, logits, _, _ = evaluator.clip_features(clips)
    return [{"frame": i, "fid": frechet_distance(FeatureStats.from_features(feats[:, i]), evaluator.frames.reference),
             "class_accuracy": float((logits[:, i].argmax(-1) == labels).double().mean())}
            for i in range(clips.shape[1])]


def first_chunk_latency(model, spec: SamplingSpec, repeats: int) -> tuple[float, float]:
    """(median seconds to the first chunk, median seconds to the whole clip) at batch 1."""
    first, whole = [], []
    for r in range(repeats):
        times = [t for _, _, t in stream(model, spec, 1, seed=10_000 + r)]
        first.append(times[0])
        whole.append(times[-1])
    return statistics.median(first), statistics.median(whole)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("student", help="a causal student's export (or its run dir)")
    p.add_argument("--teacher", default="diffdistill/assets/moving_fmnist/teacher")
    p.add_argument("--teacher-steps", type=int, default=16)
    p.add_argument("--guidance", type=float, default=3.0, help="the teacher's CFG (standard form)")
    p.add_argument("--n", type=int, default=200, help="clips per model")
    p.add_argument("--time-n", type=int, default=50, help="clips timed per model for frames/s")
    p.add_argument("--repeats", type=int, default=5, help="batch-1 streams for the first-chunk latency")
    p.add_argument("--lengths", type=int, nargs="*", default=[16, 32], help="frames for the drift test")
    p.add_argument("--window", type=int, default=0, help="cache window in chunks for the drift test (0: trained)")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="causal_student")
    p.add_argument("--out", default="evaluation/results/video")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    evaluator = VideoEvaluator()
    student_dir, student = load(args.student)
    spec = export_spec(student_dir, student)
    if not spec.chunk_frames:
        raise SystemExit(f"{student_dir} is not a causal student (its sampling has no chunk_frames); benchmark "
                         "bidirectional models with evaluation/video/bench.py")
    teacher_dir, teacher = load(args.teacher)
    teacher_spec = SamplingSpec("ode", tuple(float(t) for t in teacher.schedule.step_grid(args.teacher_steps)),
                                args.guidance)
    result = {**sweep_header(str(student_dir), read_export_meta(student_dir).get("trained_steps"), args.n, 1.0,
                             "causal few_step", "-", args.seed),
              "teacher": str(teacher_dir), "teacher_steps": args.teacher_steps, "teacher_guidance": args.guidance,
              "student_times": list(spec.times), "chunk_frames": spec.chunk_frames}
    rows = []
    for name, model, s in (("teacher", teacher, teacher_spec), ("student", student, spec)):
        clips, labels, _ = sample_setting(model, s, args.n, args.batch, args.seed)
        _, _, seconds = sample_setting(model, s, args.time_n, args.batch, args.seed + 1)
        frames = args.time_n * clips.shape[1]
        rows.append({"model": name, "steps": s.steps, "nfe": s.nfe, **evaluator.score(clips, labels).as_dict(),
                     "frames_per_s": frames / seconds})
        save_video(clips[:20], out / f"{args.name}_{name}.gif", labels=labels[:20], class_names=list(FMNIST_CLASSES))
    result["rows"] = rows
    result["speed_ratio"] = rows[1]["frames_per_s"] / rows[0]["frames_per_s"]
    result["first_chunk_s"], result["whole_clip_s"] = first_chunk_latency(student, spec, args.repeats)
    trained = student.data_shape[0]
    window = args.window or trained // spec.chunk_frames
    student.causal.window_chunks = window
    result["drift"] = {"window_chunks": window, "trained_frames": trained, "lengths": {}}
    for length in [trained, *args.lengths]:
        labels = torch.arange(args.n) % 10
        chunks = [c for _, c, _ in stream(student, replace(spec, num_classes=10), args.n, seed=args.seed,
                                          labels=labels, frames=length)]
        clips = torch.cat(chunks, dim=1).clamp(-1, 1)
        result["drift"]["lengths"][str(length)] = by_frame(evaluator, clips, labels)
        if length == max([trained, *args.lengths]):
            save_video(clips[:20], out / f"{args.name}_{length}frames.gif", labels=labels[:20],
                       class_names=list(FMNIST_CLASSES))
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    write_markdown(result, out / f"{args.name}.md")
    plot_drift(result, out / f"{args.name}_drift.png", args.name)


def write_markdown(result: dict, path: Path) -> None:
    teacher, student = result["rows"]
    lines = [f"causal student {result['model']} ({len(result['student_times'])} steps per chunk of "
             f"{result['chunk_frames']} frames) vs the teacher at {result['teacher_steps']} Euler steps with CFG "
             f"{result['teacher_guidance']}; N = {result['n']} clips, seed {result['seed']}, {result['machine']}", "",
             "| model | steps | NFE | " + " | ".join(c[1] for c in COLUMNS) + " | frames/s |",
             "|---|---:|---:|" + "---:|" * len(COLUMNS) + "---:|"]
    for r in (teacher, student):
        lines.append(f"| {r['model']} | {r['steps']} | {r['nfe']} | "
                     + " | ".join(format(r[k], f) for k, _, f in COLUMNS) + f" | {r['frames_per_s']:.1f} |")
    lines += ["", f"student / teacher: per-frame FID {student['fid_frames'] / teacher['fid_frames']:.2f}x, FD motion "
              f"{student['fd_motion'] / teacher['fd_motion']:.2f}x, frames/s {result['speed_ratio']:.1f}x; first chunk "
              f"{result['first_chunk_s'] * 1000:.0f} ms, whole clip {result['whole_clip_s'] * 1000:.0f} ms (batch 1)", "",
              f"drift (rolling cache of {result['drift']['window_chunks']} chunks; per-frame FID by frame index):", ""]
    for length, frames in result["drift"]["lengths"].items():
        quarters = [frames[i * len(frames) // 4: (i + 1) * len(frames) // 4] for i in range(4)]
        lines.append(f"- {length} frames: mean FID per quarter " + ", ".join(
            f"{statistics.mean(f['fid'] for f in q):.1f}" for q in quarters) + "; class accuracy per quarter " + ", ".join(
            f"{statistics.mean(f['class_accuracy'] for f in q):.2f}" for q in quarters))
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot_drift(result: dict, path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), dpi=100)
    for length, frames in result["drift"]["lengths"].items():
        index = [f["frame"] for f in frames]
        axes[0].plot(index, [f["fid"] for f in frames], "o-", ms=3, label=f"{length} frames")
        axes[1].plot(index, [f["class_accuracy"] for f in frames], "o-", ms=3, label=f"{length} frames")
    axes[0].axhline(result["rows"][0]["fid_frames"], color="grey", ls="--", label="teacher (all frames)")
    axes[0].axvline(result["drift"]["trained_frames"] - 0.5, color="k", lw=0.5)
    axes[1].axvline(result["drift"]["trained_frames"] - 0.5, color="k", lw=0.5)
    axes[0].set_title("per-frame FID by frame index"), axes[1].set_title("class accuracy by frame index")
    for ax in axes:
        ax.set_xlabel("frame"), ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.suptitle(f"{name}: rolling past the trained length")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
