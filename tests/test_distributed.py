"""Two processes on the CPU (torchrun + accelerate, gloo): shared randomness is shared, per-rank randomness is not, DDP keeps the
weights identical, and a 2-process run resumes from its checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffdistill.checkpoint import latest_checkpoint
from diffdistill.models.registry import load_model

HERE = Path(__file__).resolve().parent


def launch(run_dir: Path, steps: int):
    # `accelerate launch --cpu` always starts one process; torchrun sets RANK/WORLD_SIZE and accelerate's
    # Accelerator(cpu=True) then builds the gloo process group itself (its MULTI_CPU mode).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(HERE / "dist_probe.py"), str(run_dir), str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(HERE.parent)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("dist")
    first = launch(run_dir, 4)
    assert first.returncode == 0, first.stderr[-3000:]
    second = launch(run_dir, 7)                      # resumes from step-000004 (the final save) in both processes
    assert second.returncode == 0, second.stderr[-3000:]
    read = lambda steps: [json.loads((run_dir / f"probe-rank{r}-{steps}.json").read_text()) for r in (0, 1)]
    return run_dir, read(4), read(7), second.stdout + second.stderr


def test_shared_draws_match_across_ranks_and_local_draws_do_not(two_rank_run):
    _, (r0, r1), _, _ = two_rank_run
    assert r0["world"] == r1["world"] == 2
    assert r0["shared"] == r1["shared"] and len(r0["shared"]) == 4 and len(set(r0["shared"])) > 1
    assert r0["local"] != r1["local"]                # per-rank seeds are seed + rank
    assert not set(r0["batches"]) & set(r1["batches"])     # each rank reads its own data


def test_ddp_keeps_weights_identical_and_the_checkpoint_reloads(two_rank_run):
    run_dir, _, (r0, r1), log = two_rank_run
    assert r0["weights"] == r1["weights"]
    assert "resumed from" in log and r0["step"] == r1["step"] == 7
    assert len(r0["shared"]) == 7 - 4 and r0["shared"] == r1["shared"]   # only steps 5..7 ran after the resume
    assert latest_checkpoint(run_dir).name == "step-000007"
    model = load_model(run_dir / "export")
    sums = {k: v.sum().item() for k, v in model.state_dict().items()}
    assert all(abs(sums[k] - r0["weights"][k]) < 1e-5 for k in sums)
