"""Average the weights of several exports of one model (checkpoint averaging along a training run, as SWA does:
Izmailov et al. 2018) into a new export, to test whether a longer average than the run's EMA scores better.

    diffdistill export RUN                  # for each checkpoint to average (copy it into its own run folder first)
    python evaluation/fmnist/average_exports.py OUT EXPORT_A EXPORT_B [...]
    python evaluation/fmnist/compare.py --teacher-steps 0 --student avg=OUT/export --n 1000 --out ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from diffdistill.models.registry import load_model, read_export_meta, save_model


def average_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Mean of floating-point tensors; other tensors (step counters, integer buffers) from the first state."""
    keys = states[0].keys()
    if any(s.keys() != keys or any(s[k].shape != states[0][k].shape for k in keys) for s in states):
        raise ValueError("the exports hold different networks (weight names or shapes differ); average exports of "
                         "one run")
    return {k: torch.stack([s[k] for s in states]).mean(0).to(states[0][k].dtype)
            if states[0][k].is_floating_point() else states[0][k] for k in keys}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="folder to write; the average goes to OUT/export")
    p.add_argument("exports", nargs="+", help="export folders of one run (diffdistill.json + weights)")
    args = p.parse_args()
    models = [load_model(e) for e in args.exports]
    models[0].load_state_dict(average_state([m.state_dict() for m in models]))
    meta = read_export_meta(args.exports[-1])
    extra = {k: meta[k] for k in ("run_config", "sampling", "trained_steps") if k in meta}
    save_model(models[0], Path(args.out) / "export", extra | {"averaged": list(args.exports)})
    print(f"averaged {len(models)} exports -> {Path(args.out) / 'export'}")


if __name__ == "__main__":
    main()
