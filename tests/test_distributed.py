"""Two processes on the CPU (torchrun + accelerate, gloo): shared randomness is shared, per-rank randomness is not, DDP keeps the
weights identical, and a 2-process run resumes from its checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffdistill.train.checkpoint import latest_checkpoint
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


def test_torchrun_of_the_cli_forms_one_job_without_trainer_cpu(tmp_path):
    """The README's launch line on a machine without a GPU: one job of two ranks (not two runs in one folder), each
    checkpoint holding both ranks' RNG states, and the warm-up independent of the process count."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534",
           "-m", "diffdistill.cli", "train", "recipes/toy/teacher_gmm2d.yaml", f"output_dir={run_dir}",
           "trainer.max_steps=12", "trainer.batch_size=16", "trainer.log_every=1", "trainer.checkpoint_every=4",
           "trainer.keep_checkpoints=5", "trainer.sample_every=0", "trainer.preview_count=16",
           "trainer.optimizers.model.warmup_steps=10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=HERE.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("done: steps 1-12") == 1                       # only the main process reports
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    # LambdaLR after k optimizer steps: lr * min(1, (k + 1) / warmup), whatever the number of processes
    assert [r["model/lr"] for r in rows] == pytest.approx([0.002 * min(1.0, (k + 1) / 10) for k in range(1, 13)])
    checkpoints = sorted((run_dir / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step-000004", "step-000008", "step-000012"]   # no .tmp-* left over
    for ckpt in checkpoints:
        assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
        assert json.loads((ckpt / "trainer_state.json").read_text())["world_size"] == 2


def test_a_launch_that_forms_no_job_is_refused(tmp_path):
    """WORLD_SIZE says two processes but no rendezvous was set up: refuse instead of training alone."""
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "HF_HUB_OFFLINE": "1"}
    env.pop("MASTER_ADDR", None)
    cmd = [sys.executable, "-m", "diffdistill.cli", "train", "recipes/toy/teacher_gmm2d.yaml",
           f"output_dir={tmp_path / 'run'}", "trainer.max_steps=2", "trainer.cpu=true"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=HERE.parent)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "error:" in out.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_phased_dmd_trains_one_expert_at_a_time_under_ddp(tmp_path):
    """Phased DMD leaves the other phases' experts and fakes without gradients at every step: under DDP the run
    must look for unused parameters (Method.partial_updates), or the second step stops waiting for their gradients.
    Two ranks through both phases, weights identical on both ranks at the end."""
    recipe = tmp_path / "phased.yaml"
    recipe.write_text(
        "model: {kind: mlp, hidden: 32, prediction: flow, schedule: {kind: flow, shift: 3.0}}\n"
        "method: {name: phased_dmd, student_times: [1.0, 0.9, 0.75, 0.5], phases: 2, phase_steps: 3, guidance: 1.0,"
        " student_every: 1}\n"
        "data: {name: toy_gmm}\n"
        "trainer: {max_steps: 6, batch_size: 16, log_every: 1, checkpoint_every: 6, sample_every: 0,"
        " preview_count: 16, optimizers: {student: {lr: 1.0e-3}, critic: {lr: 1.0e-3}}}\n"
        f"output_dir: {tmp_path / 'run'}\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29535",
           "-m", "diffdistill.cli", "train", str(recipe)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=HERE.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["student/phase"] for r in rows] == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    export = load_model(tmp_path / "run" / "export")
    assert len(export.experts) == 2
