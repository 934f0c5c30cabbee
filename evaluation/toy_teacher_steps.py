"""Toy teacher step curve (benchmark B3, teacher side): sample an exported 2-D teacher at several step counts and
measure the distance to the exact mixture. Writes JSON + markdown + a scatter grid under evaluation/results/toy/.

    python evaluation/toy_teacher_steps.py runs/toy-teacher            # after: diffdistill train recipes/toy/teacher_gmm2d.yaml
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from toy_export import load_toy_export

from diffdistill.metrics.distribution import toy_report
from diffdistill.models.base import Cond, guided
from diffdistill.inference.sampling import ode_sample
from diffdistill.visual import save_samples

STEPS = (1, 2, 4, 8, 16, 32, 50)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="run directory (or its export/)")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--out", default="evaluation/results/toy")
    args = p.parse_args()
    directory, meta, model, mixture = load_toy_export(args.run)
    info = meta["sampling"]
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(args.n, *model.data_shape, generator=gen)
    k = info.get("num_classes", 0)
    cond = Cond(labels=torch.arange(args.n) % k) if k else None
    net = guided(model, info.get("guidance", 1.0)) if cond is not None else model
    rows, grids = [], []
    for steps in STEPS:
        ts = model.schedule.step_grid(steps, info.get("spacing", "trailing"))
        start = time.perf_counter()
        samples = ode_sample(net, noise, ts, cond)
        seconds = time.perf_counter() - start
        report = toy_report(samples, mixture)
        rows.append({"steps": steps, "nfe": steps * (2 if net is not model else 1), "seconds": seconds, **report})
        grids.append(samples[:2000])
    best = rows[-1]["seconds"]
    for row in rows:
        row["speedup_vs_50"] = best / row["seconds"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"run": str(directory), "trained_steps": meta.get("trained_steps"), "n": args.n,
              "sampler": "ode (DDIM)", "spacing": info.get("spacing"), "guidance": info.get("guidance"),
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__, "rows": rows}
    (out / "teacher_steps.json").write_text(json.dumps(result, indent=2))
    lines = ["| steps | NFE | sliced W2 (floor) | on-mode | modes covered | speed-up vs 50 steps |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['steps']} | {r['nfe']} | {r['sliced_w2']:.3f} ({r['sliced_w2_floor']:.3f}) | {r['on_mode']:.3f} | "
              f"{r['modes_covered']:.2f} | {r['speedup_vs_50']:.1f}x |" for r in rows]
    (out / "teacher_steps.md").write_text("\n".join(lines) + "\n")
    for steps, samples in zip(STEPS, grids):
        save_samples(samples, out / f"teacher_{steps:02d}steps.png", title=f"teacher, {steps} DDIM steps")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
