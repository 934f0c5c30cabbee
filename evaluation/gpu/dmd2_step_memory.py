"""Benchmark B4, SDXL row: time per DMD2 step and peak GPU memory of the 4-step SDXL recipe at full size with random
weights (no checkpoint needed), full vs LoRA student, gradient checkpointing off/on, batch 1 and 2.

    python evaluation/gpu/dmd2_step_memory.py                          # on a GPU: SDXL-base UNet (2.57B parameters)
    python evaluation/gpu/dmd2_step_memory.py --unet-config tiny.json --device cpu --weights-dtype float32 \\
        --mixed-precision no --batch 1 --out /tmp/b4                   # the same code on a tiny UNet (the CPU test)

Each row builds the teacher (frozen), the student and the critic (with the GAN head) exactly as
`diffdistill train recipes/dmd2/sdxl_4step[_lora].yaml` does, on synthetic 1024 px latents (128 x 128 x 4) and
SDXL-shaped text conditioning, then runs whole two time-scale cycles (one student + critic step, then four critic
steps) through the trainer's own `train_step`. Reported: mean seconds per step over the timed cycles, the student
step's and a critic-only step's seconds, and the peak of torch.cuda.max_memory_allocated. A row that runs out of
memory is recorded as such. Anchor: the official DMD2 code runs out of memory on one 80 GB A100 (DMD2 issue #19).
Writes evaluation/results/gpu-dmd2-sdxl-step.json (with the GPU name) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from diffdistill.data import Batch
from diffdistill.methods import build_method
from diffdistill.models.base import Cond
from diffdistill.models.diffusers import DiffusersUNet, UNetConfig
from diffdistill.train.recipe import resolve
from diffdistill.inference.generate import sync
from diffdistill.train.trainer import make_accelerator, prepare_training, train_step

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (the architecture only; the weights here are random)
SDXL_BASE_UNET = dict(
    act_fn="silu", addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], in_channels=4,
    layers_per_block=2, norm_num_groups=32, out_channels=4, projection_class_embeddings_input_dim=2816,
    sample_size=128, transformer_layers_per_block=[1, 2, 10],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], use_linear_projection=True)
RECIPES = {"full": "recipes/dmd2/sdxl_4step.yaml", "lora": "recipes/dmd2/sdxl_4step_lora.yaml"}


class SyntheticLatents:
    """SDXL-shaped training batches of random latents and text features (a DataStream)."""

    def __init__(self, unet_config: dict, batch: int, device: torch.device) -> None:
        size, channels = unet_config.get("sample_size", 128), unet_config.get("in_channels", 4)
        width = unet_config["cross_attention_dim"]
        n_ids = 6                                  # SDXL's added time ids: original size, crop, target size
        pooled = unet_config["projection_class_embeddings_input_dim"] - n_ids * unet_config["addition_time_embed_dim"]
        gen = torch.Generator().manual_seed(0)
        self.x0 = torch.randn(batch, channels, size, size, generator=gen)
        self.cond = Cond(text=torch.randn(batch, 77, width, generator=gen), pooled=torch.randn(batch, pooled, generator=gen),
                         time_ids=torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]]).repeat(batch, 1))
        self.uncond = self.cond.map(torch.zeros_like)
        self.device, self.position = device, 0

    def next(self) -> Batch:
        self.position += 1
        return Batch(self.x0, self.cond, torch.arange(self.x0.shape[0]), self.uncond).to(self.device)


@dataclass
class Row:
    student: str
    gradient_checkpointing: bool
    batch: int
    status: str
    seconds_per_step: float | None = None
    student_step_seconds: float | None = None
    critic_step_seconds: float | None = None
    peak_memory_gib: float | None = None
    trainable_student_parameters: int | None = None


def measure(args: argparse.Namespace, unet_config: dict, student: str, checkpointing: bool) -> list[Row]:
    """The rows of one (student, checkpointing) setting, one per batch size, from ONE build of the three networks
    (building 2.6B parameters three times takes longer than the timed steps). Out of memory becomes a row too;
    everything built is freed before the next setting."""
    try:
        return _run_setting(args, unet_config, student, checkpointing)
    except torch.OutOfMemoryError:          # while building or moving the networks: no batch size fits
        peak = torch.cuda.max_memory_allocated() / 2**30
        return [Row(student, checkpointing, b, "out of memory", peak_memory_gib=peak) for b in args.batch]
    finally:
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()


def _run_setting(args: argparse.Namespace, unet_config: dict, student: str, checkpointing: bool) -> list[Row]:
    run, _ = resolve(RECIPES[student])
    # the recipe's loop settings (optimizers, clipping) at this run's precision
    trainer = replace(run.trainer, mixed_precision=args.mixed_precision, cpu=args.device == "cpu")
    accelerator = make_accelerator(trainer, Path(args.out))
    teacher = DiffusersUNet(UNetConfig(config=unet_config, dtype=args.weights_dtype,
                                       gradient_checkpointing=checkpointing))
    method = build_method(run.method, {"model": teacher}, 0)
    trainable = sum(p.numel() for p in method.student.parameters() if p.requires_grad)
    session = prepare_training(method, trainer, accelerator)
    rows = []
    for batch in args.batch:
        if accelerator.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            rows.append(_time_cycles(args, method, session, trainer, accelerator, unet_config, batch))
        except torch.OutOfMemoryError:
            rows.append(Row(student, checkpointing, batch, "out of memory",
                            peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30))
        rows[-1].student, rows[-1].gradient_checkpointing = student, checkpointing
        rows[-1].trainable_student_parameters = trainable
    return rows


def _time_cycles(args: argparse.Namespace, method, session, trainer, accelerator, unet_config: dict, batch: int) -> Row:
    data = SyntheticLatents(unet_config, batch, accelerator.device)
    every = method.cfg.student_every
    times: list[tuple[int, float]] = []
    for step in range(every * (1 + args.cycles)):           # the first cycle warms up (allocator, kernels)
        sync(accelerator.device)
        start = time.perf_counter()
        train_step(method, session, data, step, trainer, accelerator, Path(args.out))
        sync(accelerator.device)
        if step >= every:
            times.append((step, time.perf_counter() - start))
    peak = torch.cuda.max_memory_allocated() / 2**30 if accelerator.device.type == "cuda" else None
    return Row("", False, batch, "ok", statistics.mean(s for _, s in times),
               statistics.mean(s for k, s in times if k % every == 0),
               statistics.mean(s for k, s in times if k % every != 0), peak)


def _merge(path: Path, result: dict) -> list[dict]:
    """This run's rows plus the rows of an earlier run with the same device and settings that this one did not
    measure, so the table can be filled over several commands (the device machine allows ten minutes each)."""
    if not path.is_file():
        return result["rows"]
    old = json.loads(path.read_text())
    same = ("device", "unet_parameters", "weights_dtype", "mixed_precision", "cycles")
    if any(old.get(k) != result[k] for k in same):
        return result["rows"]
    key = lambda r: (r["student"], r["gradient_checkpointing"], r["batch"])   # noqa: E731
    done = {key(r) for r in result["rows"]}
    return sorted([*result["rows"], *(r for r in old["rows"] if key(r) not in done)], key=key)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--unet-config", help="JSON file with a UNet2DConditionModel config (default: SDXL base)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--weights-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--mixed-precision", default="bf16", choices=["bf16", "no"])
    p.add_argument("--students", nargs="+", default=["full", "lora"], choices=list(RECIPES))
    p.add_argument("--checkpointing", nargs="+", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 2])
    p.add_argument("--cycles", type=int, default=2, help="timed TTUR cycles (student_every steps each) per row")
    p.add_argument("--out", default="evaluation/results")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU, or pass --device cpu with a small --unet-config")
    unet_config = json.loads(Path(args.unet_config).read_text()) if args.unet_config else SDXL_BASE_UNET
    rows = [row for s in args.students for c in args.checkpointing for row in measure(args, unet_config, s, c == "on")]
    from diffusers.models import UNet2DConditionModel

    with torch.device("meta"):
        parameters = sum(p.numel() for p in UNet2DConditionModel(**unet_config).parameters())
    result = {"benchmark": "B4 DMD2 SDXL 4-step step", "device": torch.cuda.get_device_name() if args.device == "cuda"
              else platform.processor() or platform.machine(), "torch": torch.__version__,
              "unet_parameters": parameters, "unet_config": "sdxl-base" if not args.unet_config else args.unet_config,
              "weights_dtype": args.weights_dtype, "mixed_precision": args.mixed_precision,
              "latent_shape": [unet_config.get("in_channels", 4)] + [unet_config.get("sample_size", 128)] * 2,
              "cycles": args.cycles, "rows": [r.__dict__ for r in rows]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu-dmd2-sdxl-step.json"
    result["rows"] = _merge(path, result)
    path.write_text(json.dumps(result, indent=2))
    lines = ["| student | grad. ckpt | batch | status | s/step (mean) | student step s | critic step s | peak GiB |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in result["rows"]:       # with the rows kept from earlier runs
        cells = [f"{r[k]:.3f}" if isinstance(r[k], float) else "-" for k in
                 ("seconds_per_step", "student_step_seconds", "critic_step_seconds", "peak_memory_gib")]
        lines.append(f"| {r['student']} | {'on' if r['gradient_checkpointing'] else 'off'} | {r['batch']} | "
                     f"{r['status']} | " + " | ".join(cells) + " |")
    (out / "gpu-dmd2-sdxl-step.md").write_text("\n".join(lines) + "\n")
    print(f"{result['device']}, UNet {parameters / 1e9:.2f}B parameters, weights {args.weights_dtype}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
