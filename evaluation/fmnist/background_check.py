"""Background brightness of a Fashion-MNIST model's samples: the 2-pixel padding border is exactly -1 in the data.

    python evaluation/fmnist/background_check.py diffdistill/assets/fmnist/teacher

A border mean above -1 is the signature of a noise schedule with non-zero terminal SNR (SD's scaled-linear table
keeps alpha(1) = 0.068 of the signal; Lin et al. 2024). Writes evaluation/results/fmnist/background_check.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from diffdistill.data import fmnist_to_tensor, load_fashion_mnist
from diffdistill.models.base import Cond, guided
from diffdistill.models.registry import find_export, load_model
from diffdistill.inference.sampling import ode_sample


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default="evaluation/results/fmnist/background_check.json")
    args = p.parse_args()
    model = load_model(find_export(args.model)).eval()
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    real = fmnist_to_tensor(load_fashion_mnist("test")[0][:1000])
    noise = torch.randn(args.n, *model.data_shape, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(args.n) % 10
    alpha_1 = float(model.schedule.alpha_sigma(torch.tensor([1.0]))[0])
    result = {"model": args.model, "n": args.n, "steps": args.steps, "alpha_at_t1": alpha_1,
              "data": {"border_mean": float(real[:, 0][:, border].mean()), "image_mean": float(real.mean())}}
    for w in (1.0, 3.0):
        with torch.no_grad():
            x = ode_sample(guided(model, w), noise, model.schedule.step_grid(args.steps), Cond(labels=labels))
        result[f"cfg_{w:g}"] = {"border_mean": float(x[:, 0][:, border].mean()), "image_mean": float(x.mean())}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
