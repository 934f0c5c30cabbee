"""Text-to-image benchmarks of an exported model: FID, KID and CLIP score on COCO-2014 or MJHQ-30k.

coco30k: 30k val2014 captions at 256 px and coco10k: 10k at 512 px (DMD2's SD1.5 / SDXL protocols); mjhq30k: 30k
Midjourney prompts at 1024 px, overall and per category. Folder layouts and the protocol:
diffdistill/eval/t2i_benchmarks.py.

    python evaluation/t2i/run.py --benchmark coco30k --data data/coco2014 --checkpoint runs/dmd2-sd15 \\
        --out evaluation/results/t2i/sd15-coco30k.json
    python evaluation/t2i/run.py --benchmark coco10k --data data/coco2014 --checkpoint runs/dmd2-sdxl \\
        --pipeline models/sdxl-base --clip models/clip-vit-g-14 --clip-preset dmd2 --save-images samples/coco10k
    python evaluation/t2i/run.py --benchmark mjhq30k --data data/mjhq30k --checkpoint runs/dmd2-sdxl --n 3000

The report (JSON) goes to stdout and, with --out, to a file. Reference features are cached in --cache-dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from diffdistill.eval.evaluate import save_json
from diffdistill.eval.t2i_benchmarks import BENCHMARKS, CLIP_PRESETS, T2IConfig, run_benchmark


def parser() -> argparse.ArgumentParser:
    """Every option defaults to None (or off), so the defaults stay in T2IConfig alone."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--benchmark", required=True, choices=list(BENCHMARKS))
    p.add_argument("--data", required=True, help="COCO_ROOT or MJHQ_ROOT (layouts: diffdistill/eval/t2i_benchmarks.py)")
    p.add_argument("--checkpoint", required=True, help="a run directory (with export/) or an export directory")
    p.add_argument("--pipeline", help="diffusers SD/SDXL folder for text encoders + VAE (default: the export's)")
    p.add_argument("--n", type=int, help="prompts to use (default: the benchmark's 30k / 10k); lower for quick runs")
    p.add_argument("--resolution", type=int, help="evaluation resolution (default: 256 coco30k, 512 coco10k, "
                                                  "1024 mjhq30k)")
    p.add_argument("--subset-seed", type=int, help="which captions form the subset (default 0; changes the "
                                                   "reference)")
    p.add_argument("--seed", type=int, help="generation noise seed (default 0)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the export's)")
    p.add_argument("--guidance", type=float, help="CFG scale, uncond + w (cond - uncond) (default: the export's)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--clip", help="a transformers CLIP folder: adds the CLIP score")
    p.add_argument("--clip-preset", choices=list(CLIP_PRESETS), help="CLIP score convention (default dmd2)")
    p.add_argument("--inception", help="Inception weights file (default: $DIFFDISTILL_INCEPTION, cache, download)")
    p.add_argument("--offline", action="store_true", default=None, help="never download weights")
    p.add_argument("--cache-dir", help="where reference features are cached (default ~/.cache/diffdistill/t2i)")
    p.add_argument("--save-images", help="a new folder for the scored PNGs and prompts.jsonl")
    p.add_argument("--out", help="also write the JSON report here")
    p.add_argument("--device")
    p.add_argument("--workers", type=int, help="threads reading real images (default 8)")
    p.add_argument("--allow-small-n", action="store_true", default=None,
                   help="report FID even when N <= feature dimension (biased)")
    p.add_argument("--precision-recall", action="store_true", default=None, help="also k-NN precision/recall")
    return p


def config_from_args(argv: list[str] | None = None) -> T2IConfig:
    args = vars(parser().parse_args(argv))
    names = {f.name for f in dataclasses.fields(T2IConfig)}
    return T2IConfig(**{k: v for k, v in args.items() if v is not None and k in names})


def main(argv: list[str] | None = None) -> int:
    config = config_from_args(argv)
    try:
        report = run_benchmark(config)
    except (FileNotFoundError, FileExistsError, ValueError) as err:      # input problems: the message is the fix
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(save_json(report, None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
