"""Per-step view of a multi-step toy student (benchmark B3): the x0 each step of the student's own rollout produces,
measured against the exact mixture, plus a scatter per step. Shows whether every step covers the data or the
steps split the modes between them (the failure of a multi-step DMD2 student trained from random weights).

    python evaluation/toy_student_steps.py runs/toy-dmd2-4step --name from_teacher
    # after: diffdistill train recipes/toy/teacher_gmm2d.yaml && diffdistill train recipes/dmd2/toy_gmm2d_4step.yaml
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from toy_export import load_toy_export

from diffdistill.metrics.distribution import toy_report
from diffdistill.models.base import Cond
from diffdistill.inference.sampling import backward_simulate
from diffdistill.visual import save_samples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="run directory (or its export/) of a few-step student")
    p.add_argument("--name", required=True, help="label for the output files")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--out", default="evaluation/results/toy/students")
    args = p.parse_args()
    directory, meta, model, mixture = load_toy_export(args.run)
    info = meta["sampling"]
    if info.get("sampler") != "few_step":
        raise SystemExit(f"{directory} is not a few-step student (sampler {info.get('sampler')!r})")
    times = torch.tensor(info["times"], dtype=torch.float64)
    noise = torch.randn(args.n, *model.data_shape, generator=torch.Generator().manual_seed(0))
    k = info.get("num_classes", 0)
    cond = Cond(labels=torch.arange(args.n) % k) if k else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with torch.no_grad():
        for step, t in enumerate(times):
            x = backward_simulate(model, noise, times, step, cond, generator=torch.Generator().manual_seed(1))
            x0 = model(x, t.expand(args.n), cond).x0
            rows.append({"step": step, "t": float(t), **toy_report(x0, mixture),
                         "mean": [round(v, 3) for v in x0.mean(0).tolist()]})
            save_samples(x0, out / f"{args.name}_step{step}.png", title=f"{args.name}: x0 at step {step} (t={float(t):.2f})")
    result = {"run": str(directory), "trained_steps": meta.get("trained_steps"), "n": args.n, "times": info["times"],
              "rows": rows}
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    for r in rows:
        print(f"step {r['step']} t={r['t']:.2f}: sliced W2 {r['sliced_w2']:.3f} (floor {r['sliced_w2_floor']:.3f}), "
              f"on-mode {r['on_mode']:.3f}, modes {r['modes_covered']:.2f}, mean {r['mean']}")


if __name__ == "__main__":
    main()
