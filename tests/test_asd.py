"""Adversarial self-distillation (diffdistill/methods/asd.py) and first-frame enhancement on a tiny class-conditioned
Wan built from a config: the discriminator's real side is the (n+1)-step rollout and its fake side the n-step one;
the student gets gradient only through its n-step rollout (one forward per chunk); first-frame enhancement runs
exactly the per-chunk step counts its spec says (network calls counted); the export serves every rung."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from test_self_forcing import TIMES, batch, tiny_teacher  # noqa: E402

from diffdistill.inference.spec import SamplingSpec  # noqa: E402
from diffdistill.inference.streaming import causal_sample, stream_chunks  # noqa: E402
from diffdistill.methods import asd as asd_module  # noqa: E402
from diffdistill.methods import build_method  # noqa: E402
from diffdistill.methods.asd import resolve_ladder  # noqa: E402
from diffdistill.models.registry import save_model  # noqa: E402

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "video"


def method(**overrides):
    spec = {"name": "asd", "chunk_frames": 2, "student_times": TIMES, "guidance": 3.0, **overrides}
    return build_method(spec, {"model": tiny_teacher()}, num_classes=10)


class CallCounter:
    """Counts a model's forwards and how many of them ran with gradients enabled."""

    def __init__(self, model) -> None:
        self.calls, self.with_grad = 0, 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args) -> None:
        self.calls += 1
        self.with_grad += int(torch.is_grad_enabled())


def test_default_ladder_is_evenly_spaced_subsets_ending_at_the_student_times():
    assert resolve_ladder([], TIMES) == [[1.0], [1.0, 0.75], [1.0, 0.9, 0.5], TIMES]
    assert resolve_ladder([[1.0], [1.0, 0.75], TIMES], TIMES) == [[1.0], [1.0, 0.75], TIMES]
    with pytest.raises(ValueError, match="last schedule must be method.student_times"):
        resolve_ladder([[1.0], [1.0, 0.75]], TIMES)
    with pytest.raises(ValueError, match="strictly more steps"):
        resolve_ladder([[1.0, 0.5], [1.0, 0.75], TIMES], TIMES)
    with pytest.raises(ValueError, match="at least two schedules"):
        resolve_ladder([], [1.0])


def test_the_pair_is_the_samplers_n_step_and_n_plus_1_step_clips_from_one_noise():
    m = method()
    data = batch()
    torch.manual_seed(3)
    fake, real, i = m.adversarial_pair(data, rung=1)
    assert i == 1 and not fake.requires_grad and not real.requires_grad
    torch.manual_seed(3)
    noise = torch.randn_like(data.x0)
    with torch.no_grad():
        expected_fake = causal_sample(m.student, noise, [1.0, 0.75], data.cond)
        expected_real = causal_sample(m.student, noise, [1.0, 0.9, 0.5], data.cond)
    torch.testing.assert_close(fake, expected_fake, rtol=0, atol=0)
    torch.testing.assert_close(real, expected_real, rtol=0, atol=0)


def test_the_discriminator_sees_real_as_the_longer_rollout_and_fake_as_the_shorter(monkeypatch):
    """The critic's one forward holds [denoising rows, real rows, fake rows, perturbed real, perturbed fake]; with the
    noising made the identity, its real rows are the (n+1)-step clip and the recorded logits are ordered so."""
    m = method()
    data = batch()
    fake, real = torch.full_like(data.x0, -0.5), torch.full_like(data.x0, 0.5)
    monkeypatch.setattr(m, "adversarial_pair", lambda b, rung=None: (fake, real, 0))
    monkeypatch.setattr(m, "_noised", lambda x0: (x0, torch.full((x0.shape[0],), 0.5, dtype=torch.float64)))
    seen = {}

    def keep_first_input(module, args) -> None:
        seen.setdefault("x", args[0].detach().clone())

    handle = m.critic.register_forward_pre_hook(keep_first_input)
    recorded = {}

    def recording(real_logits, fake_logits):
        recorded["real"], recorded["fake"] = real_logits.detach(), fake_logits.detach()
        return torch.zeros((), requires_grad=True)

    monkeypatch.setattr("diffdistill.methods.dmd2.gan_discriminator_loss", recording)
    loss, logs = m.loss("critic", data, step=1)
    handle.remove()
    n = data.x0.shape[0]
    x = seen["x"]
    assert x.shape[0] == 5 * n                              # denoise, real, fake, real + sigma eps, fake + sigma eps
    torch.testing.assert_close(x[n:2 * n], real)
    torch.testing.assert_close(x[2 * n:3 * n], fake)
    assert (x[3 * n:4 * n] - real).abs().max() < 0.1 and (x[3 * n:4 * n] - real).abs().max() > 0
    logits = m.critic(x[n:3 * n], torch.full((2 * n,), 0.5, dtype=torch.float64),
                      data.cond.cat(data.cond)).logits.detach()
    torch.testing.assert_close(recorded["real"], logits[:n], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(recorded["fake"], logits[n:], rtol=1e-4, atol=1e-5)
    assert logs["critic/fd_reg"] >= 0


def test_the_student_gets_gradient_only_through_its_n_step_rollout(monkeypatch):
    """ASD's generator term alone (DMD off by zeroing its loss): one rung draw, n x chunks forwards of which one per
    chunk keeps gradients (the exit step); the (n+1)-step clip is never rolled for the student."""
    m = method(asd_student_weight=1.0)
    monkeypatch.setattr("diffdistill.methods.self_forcing.SelfForcing._student_loss",
                        lambda self, b: (torch.zeros(()), {}))
    monkeypatch.setattr(m, "draw_rung", lambda device: 1)            # fake: [1.0, 0.75] (2 steps), real: 3 steps
    counter = CallCounter(m.student)
    loss, logs = m.loss("student", batch(), step=0)
    counter.handle.remove()
    chunks = 2
    assert logs["student/rung"] == 2
    assert counter.calls == 2 * chunks + (chunks - 1)                # 2 steps per chunk + cache writes
    assert counter.with_grad == chunks                               # only each chunk's exit step
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in m.student.parameters())
    assert all(p.grad is None for p in m.teacher.parameters())


def test_first_frame_enhancement_runs_the_configured_steps_per_chunk():
    m = method()
    student = m.student
    noise = torch.randn(1, 4, 1, 8, 8)
    counter = CallCounter(student)
    with torch.no_grad():
        chunks = list(stream_chunks(student, noise, [1.0], None,
                                    first_times=[1.0, 0.9, 0.75, 0.5]))
    counter.handle.remove()
    assert len(chunks) == 2 and counter.calls == 4 + 1 + 1           # 4 steps, cache write, 1 step
    with pytest.raises(ValueError, match="inference schedule"):
        next(stream_chunks(student, noise, [1.0], first_times=[1.0, 0.5], exit_step=0))


def test_spec_ladder_rungs_and_ffe_overrides():
    from diffdistill.schedule import Schedule

    schedule = Schedule.flow(shift=3.0)
    spec = SamplingSpec("few_step", (1.0, 0.9, 0.75, 0.5), chunk_frames=2,
                        ladder=((1.0,), (1.0, 0.75), (1.0, 0.9, 0.75, 0.5)))
    assert spec.off_schedule(2) is None and "off its training distribution" in spec.off_schedule(3)
    one = spec.override(schedule, 1, ffe=4)
    assert one.times == (1.0,) and one.first_chunk_times == (1.0, 0.9, 0.75, 0.5) and one.first_chunk_steps == 4
    assert SamplingSpec.from_dict(one.to_dict(), schedule) == one
    assert spec.override(schedule, 2, ffe=0).first_chunk_times == ()
    with pytest.raises(ValueError, match="MORE steps"):
        spec.override(schedule, 4, ffe=2)
    with pytest.raises(ValueError, match="serves \\[1, 2, 4\\] steps"):
        spec.override(schedule, 1, ffe=3)
    with pytest.raises(ValueError, match="causal"):
        SamplingSpec("few_step", (1.0,), first_chunk_times=(1.0, 0.5))


def test_a_student_without_a_ladder_samples_fewer_steps_on_a_subset_of_its_own_times():
    """Self forcing's 4-step student at 1 and 2 steps (ASD's "without ASD" rows) skips along its own times, the
    same schedules as an ASD student's default rungs, not the flow grid (whose 2-step grid ends at t = 0.009); with
    FFE its first chunk can take any count up to its own."""
    from diffdistill.schedule import Schedule

    schedule = Schedule.flow(shift=3.0)
    spec = SamplingSpec("few_step", tuple(TIMES), chunk_frames=2)
    for steps, rung in zip((1, 2, 3), resolve_ladder([], TIMES)):
        assert spec.override(schedule, steps).times == tuple(rung)
    assert spec.override(schedule, 1, ffe=2).first_chunk_times == (1.0, 0.75)
    assert spec.override(schedule, 2, ffe=4).first_chunk_times == tuple(TIMES)
    with pytest.raises(ValueError, match="trained for 4 steps"):
        spec.override(schedule, 1, ffe=5)
    assert spec.override(schedule, 8).times == tuple(float(t) for t in schedule.step_grid(8))   # more: a grid
    teacher = SamplingSpec("ode", tuple(float(t) for t in schedule.step_grid(4)))
    assert teacher.override(schedule, 2).times == tuple(float(t) for t in schedule.step_grid(2))


def test_asd_refuses_real_data_gan_and_unknown_default_rungs():
    with pytest.raises(ValueError, match="own rollouts"):
        method(gan_student_weight=0.01)
    with pytest.raises(ValueError, match="not a step count of the ladder"):
        method(ffe_steps=5)


def test_the_b2_recipe_trains_exports_the_ladder_and_samples_every_rung_with_ffe(tmp_path):
    """recipes/video/asd.yaml with a tiny teacher standing in for the shipped one (and for the self-forcing student
    it starts from): two steps, an export whose sampling carries the ladder, `diffdistill sample` at 1 step with the
    first chunk on 4 steps (first-frame enhancement)."""
    from diffdistill.cli import main
    from diffdistill.data import FMNIST_DEB_DIR

    if not (FMNIST_DEB_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs Fashion-MNIST")
    teacher = tiny_teacher(frames=4, size=16)
    save_model(teacher, tmp_path / "teacher")
    out = tmp_path / "run"
    assert main(["train", str(RECIPES / "asd.yaml"), f"model.pretrained={tmp_path / 'teacher'}",
                 f"student.pretrained={tmp_path / 'teacher'}", "student.chunk_frames=2", "data.frames=4",
                 "data.size=16", "data.sprite_size=8", "trainer.max_steps=2", "trainer.batch_size=2",
                 "trainer.log_every=1", "trainer.preview_count=2", f"output_dir={out}"]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "student/asd" in lines[0] and "critic/gan" in lines[1] and "critic/fd_reg" in lines[1]
    meta = json.loads((out / "export" / "diffdistill.json").read_text())
    assert [len(r) for r in meta["sampling"]["ladder"]] == [1, 2, 3, 4]
    png = tmp_path / "s.png"
    assert main(["sample", str(out), "--n", "2", "--steps", "1", "--ffe", "4", "--stream", "--out", str(png)]) == 0
    report = json.loads(png.with_suffix(".json").read_text())
    assert report["steps"] == 1 and report["first_chunk_steps"] == 4 and report["streamed"]
    assert main(["sample", str(out), "--n", "2", "--steps", "3", "--out", str(tmp_path / "t.png")]) == 0
    assert main(["sample", str(out), "--n", "2", "--steps", "5", "--out", str(tmp_path / "u.png")]) == 2


@pytest.mark.slow          # two processes (~15 s); self forcing's same test covers the shared exit in the default tier
def test_two_processes_share_each_rung_and_exit_step_and_keep_identical_students(tmp_path):
    """ASD through the real trainer on two CPU processes: each iteration's rung (n vs n + 1) and each exit step are
    drawn on rank 0 and broadcast, and DDP keeps the students (and critics with their heads) in step."""
    from two_ranks import HERE, rank_reports, torchrun_two

    torchrun_two([str(HERE / "self_forcing_probe.py"), str(tmp_path), "asd"], port=29543)
    r0, r1 = rank_reports(tmp_path, "sf-rank{}.json")
    assert r0["exits"] == r1["exits"] and len(r0["exits"]) == 6        # 3 steps x (student + critic rollout)
    assert r0["rungs"] == r1["rungs"] and len(r0["rungs"]) == 6        # 3 steps x (student + critic pair)
    assert r0["weights"] == pytest.approx(r1["weights"], rel=1e-6, abs=1e-6)


@pytest.mark.slow
def test_the_video_compare_scores_rungs_and_first_frame_enhancement(tmp_path):
    """evaluation/video/compare.py on a tiny teacher and a tiny causal student with a ladder (8 frames of 32 px,
    the evaluator's clip): one row per NAME=PATH@STEPS+FFE, with the first chunk's step count, speed ratios measured
    against the teacher row, and an unparsable student refused."""
    import subprocess
    import sys

    teacher = tiny_teacher(frames=8, size=32)
    save_model(teacher, tmp_path / "teacher", {"sampling": SamplingSpec("ode", (1.0, 0.5), 3.0, 10).to_dict()})
    student = tiny_teacher(frames=8, size=32).make_causal(2)
    spec = SamplingSpec("few_step", tuple(TIMES), 1.0, 10, chunk_frames=2, ladder=((1.0,), (1.0, 0.75), tuple(TIMES)))
    save_model(student, tmp_path / "student", {"sampling": spec.to_dict()})
    plain = replace(spec, ladder=())                         # self forcing's 4-step student: no ladder
    save_model(student, tmp_path / "plain", {"sampling": plain.to_dict()})
    whole = SamplingSpec("few_step", tuple(TIMES), 1.0, 10)  # a bidirectional few-step student (Phased DMD's)
    save_model(tiny_teacher(frames=8, size=32), tmp_path / "whole", {"sampling": whole.to_dict()})
    out = tmp_path / "bench"
    root = Path(__file__).resolve().parents[1]
    s = str(tmp_path / "student")
    cmd = [sys.executable, "evaluation/video/compare.py", "--teacher", str(tmp_path / "teacher"), "--teacher-steps",
           "2", "--n", "20", "--time-n", "4", "--batch", "10", "--out", str(out), "--name", "tiny",
           "--student", f"one={s}@1", "--student", f"one*={s}@1+4", "--student", f"two={s}@2",
           "--student", f"plain={tmp_path / 'plain'}@1+2", "--student", f"whole={tmp_path / 'whole'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((out / "tiny.json").read_text())["rows"]
    assert [(r["name"], r["steps"], r.get("first_chunk_steps")) for r in rows] == [
        ("teacher 2 steps", 2, None), ("one", 1, 1), ("one*", 1, 4), ("two", 2, 2), ("plain", 1, 2),
        ("whole", 4, 4)]
    assert rows[0]["speed_ratio_vs_teacher"] == 1.0 and all(r["speed_ratio_vs_teacher"] > 0 for r in rows)
    assert not any(r.get("off_schedule") for r in rows[1:4]) and (out / "tiny_onex.gif").is_file()
    # fewer steps than trained, without a ladder: off its times, on the subset of them
    assert rows[4]["off_schedule"] and rows[4]["times"] == [1.0] and rows[4]["first_chunk_times"] == [1.0, 0.75]
    bad = subprocess.run(cmd[:-10] + ["--student", f"x={s}@one"], capture_output=True, text=True, cwd=root)
    assert bad.returncode != 0
    # a setting the student cannot serve stops the run before any sampling, naming the student
    bad = subprocess.run(cmd[:-10] + ["--student", f"w={tmp_path / 'whole'}@1+4"], capture_output=True, text=True,
                         cwd=root)
    assert bad.returncode != 0 and "--student w:" in bad.stderr and "causal" in bad.stderr
    assert not (out / "tiny_w.gif").exists()
