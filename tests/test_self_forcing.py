"""Self forcing (diffdistill/methods/self_forcing.py) on a tiny class-conditioned Wan built from a config: the trap
tests (the training rollout IS the inference sampler; the context is the student's own output; one exit step for
every chunk) and an end-to-end run of the shipped B2 recipe with the tiny teacher swapped in."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from tiny_diffusers import tiny_wan_config  # noqa: E402

from diffdistill.data import Batch  # noqa: E402
from diffdistill.inference.spec import SamplingSpec  # noqa: E402
from diffdistill.inference.streaming import causal_sample  # noqa: E402
from diffdistill.methods import build_method  # noqa: E402
from diffdistill.methods import self_forcing as sf  # noqa: E402
from diffdistill.models.base import Cond  # noqa: E402
from diffdistill.models.registry import build_model, save_model  # noqa: E402

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "video"
RECIPE_NO_ODE = RECIPES / "self_forcing_no_ode_init.yaml"
TIMES = [1.0, 0.9, 0.75, 0.5]


def tiny_teacher(frames: int = 4, size: int = 8):
    torch.manual_seed(0)
    config = {**tiny_wan_config(), "in_channels": 1, "out_channels": 1}
    return build_model({"kind": "wan", "config": config, "num_classes": 10, "num_frames": frames, "height": size,
                        "width": size, "schedule": {"kind": "flow", "shift": 3.0}})


def method(**overrides):
    spec = {"name": "self_forcing", "chunk_frames": 2, "student_times": TIMES, "guidance": 3.0, **overrides}
    return build_method(spec, {"model": tiny_teacher()}, num_classes=10)


def batch(seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return Batch(torch.rand(2, 4, 1, 8, 8, generator=gen) * 2 - 1, Cond(labels=torch.tensor([3, 7])),
                 torch.arange(2))


def exit_at(monkeypatch, step: int) -> list[int]:
    """Force the shared exit step and record each draw's range."""
    calls = []

    def fake(low, high, size=1, device="cpu"):
        calls.append((low, high))
        torch.randint(low, high, (size,))                       # consume the RNG as the real draw does
        return torch.tensor([step])

    monkeypatch.setattr(sf, "shared_randint", fake)
    return calls


def test_the_training_rollout_is_the_inference_sampler_on_the_students_own_context(monkeypatch):
    """With the exit at the last step, method.generate (training) returns exactly what causal_sample (the sampler of
    `diffdistill sample` and the demo) draws from the same noise; real data never enters (self rollout)."""
    m = method()
    calls = exit_at(monkeypatch, len(TIMES) - 1)
    data = batch()
    torch.manual_seed(11)
    with torch.no_grad():
        trained, e = m.generate(data, with_grad=False)
    assert e == 3 and calls == [(0, len(TIMES))]
    torch.manual_seed(11)
    torch.randint(0, len(TIMES), (1,))
    noise = torch.randn_like(data.x0)
    with torch.no_grad():
        sampled = causal_sample(m.student, noise, TIMES, data.cond)
    torch.testing.assert_close(trained, sampled, rtol=0, atol=0)
    torch.manual_seed(11)
    with torch.no_grad():
        other_data, _ = m.generate(Batch(-data.x0, data.cond, data.index), with_grad=False)
    torch.testing.assert_close(other_data, trained, rtol=0, atol=0)             # the clip's content is not used


def test_teacher_forcing_ablation_reads_the_real_clip_as_context(monkeypatch):
    m = method(rollout="teacher_forcing")
    exit_at(monkeypatch, 1)
    data = batch()
    torch.manual_seed(5)
    with torch.no_grad():
        a, _ = m.generate(data, with_grad=False)
    torch.manual_seed(5)
    with torch.no_grad():
        b, _ = m.generate(Batch(-data.x0, data.cond, data.index), with_grad=False)
    assert torch.equal(a[:, :2], b[:, :2]) and (a[:, 2:] - b[:, 2:]).abs().max() > 1e-4


def test_one_exit_step_per_rollout_and_gradients_reach_the_student_only_there(monkeypatch):
    m = method()
    calls = exit_at(monkeypatch, 2)
    loss, logs = m.loss("student", batch(), step=0)
    assert calls == [(0, len(TIMES))] and logs["student/k"] == 2            # one draw for all chunks
    loss.backward()
    student_grads = [p.grad for p in m.student.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().max() > 0 for g in student_grads)
    assert all(p.grad is None for p in m.teacher.parameters())
    assert m.student.causal is not None and m.critic.causal is None and m.teacher.causal is None


def test_self_forcing_refuses_image_teachers_and_mismatched_chunks():
    unet = build_model({"kind": "toy_gmm"})
    with pytest.raises(ValueError, match="self_forcing distils a video transformer"):
        build_method({"name": "self_forcing", "student_times": TIMES}, {"model": unet}, 0)
    with pytest.raises(ValueError, match="not a whole number of chunks of 3 frames"):
        method(chunk_frames=3)


def test_the_b2_recipe_trains_exports_and_streams_with_a_tiny_teacher(tmp_path):
    """recipes/video/self_forcing.yaml as shipped, the teacher swapped for a tiny Wan on 4 frames of 16 px: two steps
    (a student and a critic phase), an export whose sampling streams in chunks, and `diffdistill sample` on it."""
    from diffdistill.cli import main
    from diffdistill.data import FMNIST_DEB_DIR

    if not (FMNIST_DEB_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs Fashion-MNIST")
    teacher = tiny_teacher(frames=4, size=16)
    save_model(teacher, tmp_path / "teacher")
    out = tmp_path / "run"
    assert main(["train", str(RECIPE_NO_ODE), f"model.pretrained={tmp_path / 'teacher'}", "data.frames=4", "data.size=16",
                 "data.sprite_size=8", "trainer.max_steps=2", "trainer.batch_size=2", "trainer.log_every=1",
                 "trainer.preview_count=2", f"output_dir={out}"]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "student/dm" in lines[0] and "critic/denoise" in lines[1]
    meta = json.loads((out / "export" / "diffdistill.json").read_text())
    assert meta["sampling"]["chunk_frames"] == 2 and meta["model"]["chunk_frames"] == 2
    assert (out / "samples" / "final.gif").is_file()
    png = tmp_path / "s.png"
    assert main(["sample", str(out), "--n", "2", "--out", str(png)]) == 0
    assert json.loads(png.with_suffix(".json").read_text())["nfe"] == len(TIMES)
    assert main(["sample", str(out), "--n", "2", "--stream", "--frames", "8", "--out", str(tmp_path / "long.png")]) == 0
    report = json.loads((tmp_path / "long.json").read_text())
    assert report["streamed"] and report["chunks"] == 4 and 0 < report["first_chunk_seconds"] <= report["seconds"]
    assert main(["sample", str(tmp_path / "teacher"), "--stream"]) == 2            # a bidirectional teacher


def test_ode_pairs_lie_on_the_teachers_path_and_initialise_the_self_forcing_student(tmp_path):
    """`diffdistill ode-pairs` -> recipes/video/ode_init.yaml -> recipes/video/self_forcing.yaml (its student is the
    ODE-regressed export), each as shipped with the tiny teacher swapped in."""
    from diffdistill.cli import main
    from diffdistill.data.ode_pairs import ODEPairsConfig, ODEPairsStream
    from diffdistill.inference.ode_pairs import ode_grid
    from diffdistill.inference.sampling import ode_sample
    from diffdistill.models.base import guided
    from diffdistill.models.registry import load_model

    teacher = tiny_teacher(frames=4, size=16)
    save_model(teacher, tmp_path / "teacher", {"sampling": {"sampler": "ode", "steps": 8, "guidance": 3.0,
                                                            "num_classes": 10}})
    pairs = tmp_path / "pairs"
    assert main(["ode-pairs", str(tmp_path / "teacher"), "--times", *map(str, TIMES), "--n", "3",
                 "--steps-per-segment", "2", "--batch-size", "2", "--out", str(pairs)]) == 0
    stream = ODEPairsStream(ODEPairsConfig(str(pairs)), batch_size=3)
    batch = stream.next()
    assert batch.states.shape == (3, 4, 4, 1, 16, 16) and batch.state_times.tolist() == TIMES
    # path consistency: the teacher's ODE continued from the state stored at t = 0.75 ends at the stored endpoint
    grid = ode_grid(TIMES, 2)
    with torch.no_grad():
        end = ode_sample(guided(teacher.eval(), 3.0), batch.states[:, 2], grid[4:], batch.cond)
    torch.testing.assert_close(end, batch.x0, rtol=1e-4, atol=1e-4)

    init = tmp_path / "ode-init"
    assert main(["train", str(RECIPES / "ode_init.yaml"), f"model.pretrained={tmp_path / 'teacher'}",
                 f"data.path={pairs}", "trainer.max_steps=2", "trainer.batch_size=3", "trainer.log_every=1",
                 "trainer.preview_count=2", f"output_dir={init}"]) == 0
    student = load_model(init / "export")
    assert student.causal is not None and student.causal.chunk_frames == 2
    run = tmp_path / "sf"
    assert main(["train", str(RECIPES / "self_forcing.yaml"), f"model.pretrained={tmp_path / 'teacher'}",
                 f"student.pretrained={init / 'export'}", "data.frames=4", "data.size=16", "data.sprite_size=8",
                 "trainer.max_steps=1", "trainer.batch_size=2", "trainer.log_every=1", "trainer.preview_count=2",
                 f"output_dir={run}"]) == 0
    meta = json.loads((run / "export" / "diffdistill.json").read_text())
    assert meta["sampling"]["chunk_frames"] == 2
    # the student's lineage counts the pairs' generation, then the ODE regression, before its own run
    generation = json.loads((pairs / "meta.json").read_text())["generation_seconds"]
    assert generation > 0
    pairs_stage, regression = meta["earlier_stages"]
    assert pairs_stage == {"run": str(pairs), "checkpoint": "ode-pairs", "steps": 0, "seconds": generation}
    assert regression["run"] == str(init / "export") and regression["steps"] == 2


def test_two_processes_share_each_exit_step_and_keep_identical_students(tmp_path):
    """The exit step is drawn on rank 0 and broadcast: every rank rolls out to the same step (else DDP would average
    gradients of different computations); DDP keeps the students identical through the chunks' several forwards."""
    from two_ranks import HERE, rank_reports, torchrun_two

    torchrun_two([str(HERE / "self_forcing_probe.py"), str(tmp_path)], port=29541)
    r0, r1 = rank_reports(tmp_path, "sf-rank{}.json")
    assert r0["exits"] == r1["exits"] and len(r0["exits"]) == 6        # 3 steps x (student + critic rollout)
    assert r0["weights"] == pytest.approx(r1["weights"], rel=1e-6, abs=1e-6)


@pytest.mark.slow
def test_the_causal_bench_scores_streams_and_rolls_past_the_trained_length(tmp_path):
    """evaluation/video/causal_bench.py on tiny exports at the evaluator's clip size (8 frames of 32 px): both rows
    scored, a speed ratio and first-chunk latency, and per-frame scores at every frame index of the 8- and 16-frame
    streams (the rolling cache keeps the trained 4 chunks)."""
    teacher = tiny_teacher(frames=8, size=32)
    save_model(teacher, tmp_path / "teacher", {"sampling": SamplingSpec("ode", (1.0, 0.5), 3.0, 10).to_dict()})
    student = tiny_teacher(frames=8, size=32).make_causal(2)
    spec = SamplingSpec("few_step", tuple(TIMES), 1.0, 10, chunk_frames=2)
    save_model(student, tmp_path / "student", {"sampling": spec.to_dict()})
    out = tmp_path / "bench"
    done = subprocess.run([sys.executable, "evaluation/video/causal_bench.py", str(tmp_path / "student"), "--teacher",
                           str(tmp_path / "teacher"), "--teacher-steps", "2", "--n", "20", "--time-n", "4",
                           "--repeats", "1", "--lengths", "16", "--batch", "10", "--out", str(out), "--name", "tiny"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "tiny.json").read_text())
    teacher_row, student_row = result["rows"]
    assert (teacher_row["model"], teacher_row["nfe"], student_row["nfe"]) == ("teacher", 4, 4)
    assert result["speed_ratio"] > 0 and 0 < result["first_chunk_s"] <= result["whole_clip_s"]
    drift = result["drift"]
    assert drift["window_chunks"] == 4 and sorted(drift["lengths"]) == ["16", "8"]
    assert [f["frame"] for f in drift["lengths"]["16"]] == list(range(16))
    assert all(f["fid"] >= 0 and 0 <= f["class_accuracy"] <= 1 for f in drift["lengths"]["16"])
    assert (out / "tiny_drift.png").is_file() and (out / "tiny_16frames.gif").is_file()
