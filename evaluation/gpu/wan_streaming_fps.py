"""Benchmark B4, Wan row: streaming frames/s and first-chunk latency of a Wan2.1-T2V-1.3B causal student at 832x480,
4 steps, chunks of 3 latent frames, KV cache; random weights at full size (no checkpoint needed).

    python evaluation/gpu/wan_streaming_fps.py                         # on a GPU: the 1.3B architecture, bf16
    python evaluation/gpu/wan_streaming_fps.py --tiny --device cpu --dtype float32 --out /tmp/b4   # the CPU test

The student is the toolkit's own block-causal Wan (diffdistill/models/causal.py) sampled through the one streaming
rollout (diffdistill/inference/streaming.py), as `diffdistill sample --stream` runs it; text conditioning is a random
umT5-shaped embedding [1, 512, 4096] (encoding a prompt is not part of the stream). Reported per repeat: seconds to
the first chunk and to the whole clip, latent and pixel frames/s (a Wan latent frame is 4 pixel frames after the
first; VAE decoding is not included), and the peak of torch.cuda.max_memory_allocated. Anchors (one H100, with
VAE decoding): Self Forcing 17 FPS, 0.69 s first chunk. Writes <out>/gpu-wan-streaming.json with the device name.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from diffdistill.inference.generate import sync
from diffdistill.inference.streaming import stream_chunks
from diffdistill.models.base import Cond
from diffdistill.models.registry import build_model

# Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json (the architecture only; the weights here are random)
WAN21_1_3B = dict(patch_size=[1, 2, 2], num_attention_heads=12, attention_head_dim=128, in_channels=16,
                  out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
TINY = dict(patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
TIMES = [1.0, 0.9375, 0.8333333333333334, 0.625]          # Self Forcing's 1000/750/500/250 warped by shift 5


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="a two-layer Wan on 3 chunks of 4x4 latents (the CPU test)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--latent-frames", type=int, default=21, help="21 latent frames = 81 pixel frames")
    p.add_argument("--chunk", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="evaluation/results")
    args = p.parse_args()
    config = TINY if args.tiny else WAN21_1_3B
    frames, height, width = (6, 4, 4) if args.tiny else (args.latent_frames, 60, 104)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model({"kind": "wan", "config": config, "dtype": args.dtype, "num_frames": frames, "height": height,
                         "width": width, "chunk_frames": args.chunk}).to(device).eval()
    text = Cond(text=torch.randn(1, 512 if not args.tiny else 8, config["text_dim"]).to(device, getattr(torch, args.dtype)))
    rows = []
    for repeat in range(args.repeats + 1):                     # repeat 0 warms up (kernels, allocator)
        noise = torch.randn(1, *model.data_shape, device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        start, marks = time.perf_counter(), []
        with torch.no_grad():
            for _ in stream_chunks(model, noise, TIMES, text):
                sync(device)
                marks.append(time.perf_counter() - start)
        if repeat:
            rows.append({"first_chunk_s": marks[0], "clip_s": marks[-1], "latent_fps": frames / marks[-1],
                         "pixel_fps": (1 + 4 * (frames - 1)) / marks[-1],
                         "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None})
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU"
    summary = {key: statistics.median(r[key] for r in rows) for key in ("first_chunk_s", "clip_s", "latent_fps",
                                                                         "pixel_fps")}
    result = {"device": name, "torch": torch.__version__, "model": "tiny Wan" if args.tiny else "Wan2.1-T2V-1.3B "
              "architecture, random weights", "parameters": sum(p.numel() for p in model.parameters()),
              "dtype": args.dtype, "latent_clip": [frames, 16, height, width], "chunk_frames": args.chunk,
              "steps": len(TIMES), "times": TIMES, "vae_decode_included": False, "median": summary, "repeats": rows,
              "peak_gib": max((r["peak_gib"] or 0) for r in rows) or None}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-wan-streaming.json").write_text(json.dumps(result, indent=2))
    print(f"| device | first chunk s | clip s | latent frames/s | pixel frames/s |\n|---|---:|---:|---:|---:|\n"
          f"| {name} | {summary['first_chunk_s']:.3f} | {summary['clip_s']:.3f} | {summary['latent_fps']:.2f} | "
          f"{summary['pixel_fps']:.2f} |")


if __name__ == "__main__":
    main()
