"""What each training run cost: steps, wall time (its own and with earlier stages), seconds per step and peak memory.

    python evaluation/video/train_cost.py RUN [RUN ...] --out evaluation/results/video/<name>/train_cost.md

Reads each run's export (``diffdistill.json``: steps, ``train_seconds``, earlier stages) and ``metrics.jsonl``
(``peak_mem_mb``, logged by the trainer on every line: the process's peak resident set on the CPU, allocated memory
on a GPU). Self Forcing's ablation without gradient truncation is judged on this table as much as on quality
(arXiv:2506.08009 sec. 3.3: truncation is what keeps the rollout's memory flat).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch

from diffdistill.train.lineage import export_training


def run_cost(run: Path) -> dict[str, Any]:
    meta_path = run / "export" / "diffdistill.json"
    if not meta_path.is_file():
        raise SystemExit(f"{run} has no export: train it first (its recipe resumes from the last checkpoint)")
    meta = json.loads(meta_path.read_text())
    log = run / "metrics.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    peaks = [r["peak_mem_mb"] for r in rows if "peak_mem_mb" in r]
    steps, seconds = meta.get("trained_steps"), meta.get("train_seconds")
    return {"run": str(run), "steps": steps, "seconds": seconds,
            "seconds_per_step": round(seconds / steps, 3) if steps and seconds else None,
            "peak_mem_mb": max(peaks) if peaks else None, "total": export_training(run / "export")}


def markdown(rows: list[dict[str, Any]]) -> str:
    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = ["| run | steps | wall time | s/step | peak memory (MB) | with earlier stages |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        total = r["total"]
        lines.append(f"| {r['run']} | {fmt(r['steps'], 'd')} | {fmt(r['seconds'], '.0f')} s | "
                     f"{fmt(r['seconds_per_step'], '.3f')} | {fmt(r['peak_mem_mb'], '.0f')} | "
                     f"{fmt(total['train_seconds'], '.0f')} s in {total['stages']} stage(s) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="markdown table; the JSON goes beside it")
    args = p.parse_args()
    rows = [run_cost(run) for run in args.runs]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table = markdown(rows)
    args.out.write_text(f"training cost per run ({platform.machine()} CPU, {torch.get_num_threads()} threads)\n\n"
                        + table)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    print(table)


if __name__ == "__main__":
    main()
