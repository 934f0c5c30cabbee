"""Sharded training through accelerate's FSDP plugin for a DMD2 recipe, stopped at step 4 and resumed to step 6,
equals the same run done in one go (weights and every logged loss). accelerate (1.x) shards only on accelerator
devices: on CPU processes it would run the job as plain DDP, so a CPU launch with --use_fsdp is refused with that
reason (default tier) and the sharded run itself is a GPU check (marked gpu)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffdistill.models.registry import build_model, save_model

ROOT = Path(__file__).resolve().parents[1]
FSDP = ["--use_fsdp", "--fsdp_sharding_strategy", "FULL_SHARD", "--fsdp_auto_wrap_policy", "NO_WRAP",
        "--fsdp_use_orig_params", "true"]


def toy_teacher(folder: Path) -> Path:
    save_model(build_model({"kind": "mlp", "hidden": 32, "layers": 2, "prediction": "eps", "num_classes": 2,
                            "schedule": {"kind": "vp", "beta_schedule": "scaled_linear"}}), folder,
               {"sampling": {"sampler": "ode", "steps": 8, "guidance": 1.0, "num_classes": 2}})
    return folder


def launch(run_dir: Path, teacher: Path, steps: int, port: int, processes: int, env: dict):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes), *FSDP,
           "--main_process_port", str(port), "-m", "diffdistill.cli", "train", "recipes/dmd2/toy_gmm2d_4step.yaml",
           f"model.pretrained={teacher}", f"output_dir={run_dir}", f"trainer.max_steps={steps}",
           "trainer.batch_size=16", "trainer.log_every=1", "trainer.checkpoint_every=2", "trainer.sample_every=0",
           "trainer.preview_count=16"]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                                     "HF_HUB_OFFLINE": "1", **env},
                          timeout=600, cwd=ROOT)


@pytest.mark.slow
def test_an_fsdp_launch_on_cpus_is_refused_with_the_reason(tmp_path):
    done = launch(tmp_path / "run", toy_teacher(tmp_path / "teacher"), 2, 29581, 2, {"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode != 0
    assert "error: accelerate's FSDP plugin shards only on GPUs" in done.stderr        # ours, not a traceback
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.gpu
def test_fsdp_resumes_exactly_on_gpus(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    processes = min(2, torch.cuda.device_count())
    teacher = toy_teacher(tmp_path / "teacher")
    for steps in (4, 6):
        done = launch(tmp_path / "resumed", teacher, steps, 29584 + steps, processes, {})
        assert done.returncode == 0, done.stderr[-3000:]
    assert f"{processes} processes (FSDP)" in done.stdout or processes == 1
    assert "resumed from" in done.stdout and "step-000004" in done.stdout
    done = launch(tmp_path / "straight", teacher, 6, 29591, processes, {})
    assert done.returncode == 0, done.stderr[-3000:]
    logs = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("resumed", "straight")]
    assert [r["critic/denoise"] for r in logs[0]] == pytest.approx([r["critic/denoise"] for r in logs[1]])
    a, b = (load_file(tmp_path / run / "export" / "model.safetensors") for run in ("resumed", "straight"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k]) for k in a)
