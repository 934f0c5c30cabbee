import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from diffdistill.train.checkpoint import latest_checkpoint
from diffdistill.data import ToyDataConfig, ToyMixtureStream
from diffdistill.inference.spec import SamplingSpec
from diffdistill.methods.base import Method
from diffdistill.methods.teacher import Teacher, TeacherConfig
from diffdistill.metrics.distribution import toy_report
from diffdistill.models.registry import load_model
from diffdistill.models.toy import MixtureConfig, MLPConfig, MLPDenoiser
from diffdistill.train.trainer import (FAULT_ENV, NonFiniteLossError, OptimizerConfig, TrainerConfig, fit,
                                 make_accelerator, validate_trainer_config)

REPO = Path(__file__).resolve().parents[1]


def trainer_cfg(**kw):
    base = dict(max_steps=10, batch_size=8, log_every=1, checkpoint_every=1000, preview_count=16, cpu=True)
    base.update(kw)
    return TrainerConfig(**base)


def run_fit(method, cfg, run_dir, data=None):
    data = data or ToyMixtureStream(ToyDataConfig(), cfg.batch_size, cfg.seed)
    return fit(method, data, cfg, run_dir, make_accelerator(cfg, Path(run_dir)))


def test_teacher_training_learns_the_mixture(tmp_path):
    data_cfg = ToyDataConfig(mixture=MixtureConfig(modes=4, std=0.1))
    teacher = Teacher(TeacherConfig(preview_steps=30, preview_spacing="linspace"), MLPDenoiser(MLPConfig(hidden=64)))
    cfg = trainer_cfg(max_steps=1500, batch_size=128, optimizers={"model": OptimizerConfig(lr=3e-3)},
                      ema_decay=0.99, preview_count=1000, log_every=150)
    result = run_fit(teacher, cfg, tmp_path, ToyMixtureStream(data_cfg, 128))
    model = load_model(result.export_dir)
    samples = Teacher(TeacherConfig(preview_steps=30, preview_spacing="linspace"), model).preview(1000)
    report = toy_report(samples, data_cfg.mixture)
    assert report["on_mode"] > 0.8 and report["modes_covered"] == 1.0, report
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(150, 1501, 150))
    assert rows[-1]["model/denoise"] < rows[0]["model/denoise"]
    assert (tmp_path / "samples" / "final.png").stat().st_size > 1000


class TwoGroup(Method):
    """Student/critic toy method: records how many micro-batches each phase sees; the student loss also pushes
    (with weight `leak`) gradient into the critic's parameters, like a GAN generator term through the critic."""

    groups = ("student", "critic")

    def __init__(self, leak: float = 0.0, every: int = 5):
        super().__init__()
        self.student, self.critic = nn.Linear(2, 2), nn.Linear(2, 2)
        self.leak, self.every = leak, every
        self.calls = {"student": 0, "critic": 0}

    def phases(self, step):
        return ("student", "critic") if step % self.every == 0 else ("critic",)

    def loss(self, phase, batch, step):
        self.calls[phase] += 1
        if phase == "student":
            loss = self.student(batch.x0).pow(2).mean() + self.leak * self.critic(batch.x0).sum()
        else:
            loss = (self.critic(batch.x0) - batch.x0).pow(2).mean()
        return loss, {f"{phase}/loss": loss.detach()}

    def preview(self, n, seed=0, *, batch=None):
        return torch.zeros(n, 2)

    def export_model(self):
        return MLPDenoiser(MLPConfig(hidden=8, layers=1))

    def sampling_spec(self):
        return SamplingSpec("few_step", (1.0,))



@pytest.mark.parametrize("accum", [1, 3])
def test_two_time_scale_ratio_holds_under_gradient_accumulation(tmp_path, accum):
    method = TwoGroup(every=5)
    cfg = trainer_cfg(max_steps=20, grad_accum=accum)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    run_fit(method, cfg, tmp_path)
    # 20 steps: the student steps at 0, 5, 10, 15 (4 updates), the critic every step (20 updates)
    assert method.calls == {"student": 4 * accum, "critic": 20 * accum}
    state = torch.load(latest_checkpoint(tmp_path) / "optimizer.bin", weights_only=True)["state"]
    assert int(state[0]["step"]) == 4
    critic_state = torch.load(latest_checkpoint(tmp_path) / "optimizer_1.bin", weights_only=True)["state"]
    assert int(critic_state[0]["step"]) == 20
    assert not torch.equal(before["student.weight"], method.role("student").weight)


def test_a_phase_never_leaks_gradient_into_another_groups_update(tmp_path):
    clean, leaky = TwoGroup(leak=0.0), TwoGroup(leak=1e3)
    leaky.load_state_dict(clean.state_dict())
    run_fit(clean, trainer_cfg(max_steps=12), tmp_path / "a")
    run_fit(leaky, trainer_cfg(max_steps=12), tmp_path / "b")
    torch.testing.assert_close(leaky.role("critic").weight, clean.role("critic").weight, rtol=0, atol=0)


class NaNAt(Teacher):
    def __init__(self, bad_step):
        super().__init__(TeacherConfig(preview_steps=2), MLPDenoiser(MLPConfig(hidden=16)))
        self.bad_step = bad_step

    def loss(self, phase, batch, step):
        loss, logs = super().loss(phase, batch, step)
        return (loss * float("nan") if step == self.bad_step else loss), logs


def test_nan_loss_stops_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    method = NaNAt(bad_step=4)             # 0-based index 4 = the 5th step
    with pytest.raises(NonFiniteLossError, match="step 5") as err:
        run_fit(method, trainer_cfg(max_steps=10, checkpoint_every=2), tmp_path)
    last = latest_checkpoint(tmp_path)
    assert last.name == "step-000004" and str(last) in str(err.value)
    from safetensors.torch import load_file

    saved = load_file(last / "model.safetensors")
    live = method.role("model").state_dict()     # 4 steps done, the 5th never stepped: weights equal the checkpoint
    assert all(torch.equal(saved[k], live[k]) for k in saved)


def test_interrupted_checkpoint_folders_are_ignored(tmp_path):
    run_fit(TwoGroup(), trainer_cfg(max_steps=4, checkpoint_every=2), tmp_path)
    (tmp_path / "checkpoints" / ".tmp-step-000006").mkdir()
    (tmp_path / "checkpoints" / "step-000008").mkdir()          # no trainer_state.json: incomplete
    assert latest_checkpoint(tmp_path).name == "step-000004"


@pytest.mark.parametrize("bad,match", [(dict(max_steps=0), "max_steps"), (dict(grad_accum=0), "grad_accum"),
                                       (dict(optimizers={"critic": OptimizerConfig()}), "unknown group"),
                                       (dict(ema_decay=1.5), "ema_decay")])
def test_bad_trainer_settings_are_rejected_before_training(bad, match):
    with pytest.raises(ValueError, match=match):
        validate_trainer_config(trainer_cfg(**bad), ("model",))


def _train_cli(run_dir: Path, steps: int, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "diffdistill.cli", "train", str(REPO / "recipes/toy/teacher_gmm2d.yaml"),
           f"output_dir={run_dir}", f"trainer.max_steps={steps}", "trainer.checkpoint_every=3",
           "trainer.log_every=1", "trainer.batch_size=32", "trainer.preview_count=32", "trainer.sample_every=0",
           "trainer.keep_checkpoints=5"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_a_run_killed_with_sigkill_resumes_to_the_same_weights_and_data_order(tmp_path):
    full = _train_cli(tmp_path / "full", 12)
    assert full.returncode == 0, full.stderr
    killed = _train_cli(tmp_path / "killed", 12, {FAULT_ENV: "7"})
    assert killed.returncode == -9                                 # SIGKILL: no cleanup ran
    assert latest_checkpoint(tmp_path / "killed").name == "step-000006"
    assert not (tmp_path / "killed" / "export").exists()
    before_kill = json.loads((latest_checkpoint(tmp_path / "killed") / "trainer_state.json").read_text())
    resumed = _train_cli(tmp_path / "killed", 12)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout + resumed.stderr
    from safetensors.torch import load_file

    a = load_file(tmp_path / "full" / "export" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "export" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda d: {r["step"]: r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())}
    full_rows, resumed_rows = rows(tmp_path / "full"), rows(tmp_path / "killed")
    for step in range(7, 13):                    # the same batches and noise after the resume: identical losses
        assert resumed_rows[step]["model/denoise"] == full_rows[step]["model/denoise"]
    state = json.loads((latest_checkpoint(tmp_path / "killed") / "trainer_state.json").read_text())
    assert state["step"] == 12 and state["data_position"] == 12
    # the run's clock continues from the checkpoint (the killed launch's time after step 6 is lost, not doubled)
    assert state["train_seconds"] > before_kill["train_seconds"] > 0


def test_resume_with_different_maths_is_refused(tmp_path):
    assert _train_cli(tmp_path, 3).returncode == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "diffdistill.cli", "train", str(REPO / "recipes/toy/teacher_gmm2d.yaml"),
           f"output_dir={tmp_path}", "trainer.max_steps=6", "trainer.batch_size=64"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert out.returncode == 2 and "trainer.batch_size" in out.stderr and "new output_dir" in out.stderr


def test_bf16_mixed_precision_trains_with_finite_losses(tmp_path):
    teacher = Teacher(TeacherConfig(preview_steps=2), MLPDenoiser(MLPConfig(hidden=32)))
    result = run_fit(teacher, trainer_cfg(max_steps=6, mixed_precision="bf16"), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert result.step == 6 and all(torch.isfinite(torch.tensor(r["model/denoise"])) for r in rows)
    assert next(teacher.role("model").parameters()).dtype == torch.float32     # master weights stay float32


def test_ema_warms_up_so_early_weights_do_not_linger():
    from diffdistill.train.trainer import _make_ema

    net = nn.Linear(1, 1, bias=False)
    net.weight.data.fill_(0.0)
    ema = _make_ema(net, 0.999)
    for _ in range(50):
        net.weight.data.fill_(1.0)
        ema.update_parameters(net)
    # a plain 0.999 EMA would still hold 0.999**49 = 95% of the initial 0; the warm-up has forgotten most of it
    assert float(ema.module.weight) > 0.8
    for _ in range(2000):
        ema.update_parameters(net)
    assert float(ema.module.weight) == pytest.approx(1.0, abs=1e-6)


class WithHook(TwoGroup):
    """Records the after-update hook and reads the EMA there, as a consistency target would."""

    def __init__(self):
        super().__init__(every=2)
        self.updates, self.ema_seen = [], []

    def after_update(self, phase, step):
        self.updates.append((phase, step))
        if phase == "student":
            self.ema_seen.append(self.ema_model().weight.detach().clone())


def test_after_update_runs_after_every_optimizer_step_and_sees_the_updated_ema(tmp_path):
    from diffdistill.train.trainer import prepare_training, train_step

    method, cfg = WithHook(), trainer_cfg(max_steps=4, ema_decay=0.5, ema_group="student")
    accelerator, data = make_accelerator(cfg, tmp_path), ToyMixtureStream(ToyDataConfig(), cfg.batch_size)
    session = prepare_training(method, cfg, accelerator)
    for step in range(4):
        train_step(method, session, data, step, cfg, accelerator, tmp_path)
    assert method.updates == [("student", 0), ("critic", 0), ("critic", 1), ("student", 2), ("critic", 2),
                              ("critic", 3)]
    # the EMA was updated before the hook ran: after the first update it already differs from the initial weights
    assert len(method.ema_seen) == 2 and not torch.equal(method.ema_seen[0], method.ema_seen[1])
    assert isinstance(method.student, nn.Module) and method.student.weight is method.role("student").weight


def test_a_method_that_reads_its_ema_needs_an_ema_and_roles_must_share_a_schedule(tmp_path):
    class NeedsEMA(TwoGroup):
        requires_ema = True

    with pytest.raises(ValueError, match="set trainer.ema_decay"):
        run_fit(NeedsEMA(), trainer_cfg(max_steps=1), tmp_path / "a")
    from diffdistill.methods.dmd2 import DMD2, DMD2Config
    from diffdistill.models.toy import ScheduleConfig

    teacher = MLPDenoiser(MLPConfig(hidden=16, prediction="x0", schedule=ScheduleConfig(kind="flow")))
    critic = MLPDenoiser(MLPConfig(hidden=16, prediction="x0", schedule=ScheduleConfig(kind="vp")))
    method = DMD2(DMD2Config(), teacher, critic=critic)
    with pytest.raises(ValueError, match="role 'critic' uses a vp schedule that differs from 'teacher'"):
        run_fit(method, trainer_cfg(max_steps=1), tmp_path / "b")


def test_lr_factor_warms_up_then_decays_on_a_cosine_to_its_floor():
    from diffdistill.train.trainer import OptimizerConfig, lr_factor

    cfg = OptimizerConfig(warmup_steps=10, decay_start=100, decay_steps=200, min_lr_ratio=0.1)
    assert lr_factor(cfg, 0) == pytest.approx(0.1) and lr_factor(cfg, 50) == 1.0 and lr_factor(cfg, 100) == 1.0
    assert lr_factor(cfg, 200) == pytest.approx(0.55) and lr_factor(cfg, 300) == pytest.approx(0.1)
    assert lr_factor(cfg, 5000) == pytest.approx(0.1)
    assert lr_factor(OptimizerConfig(warmup_steps=4), 1000) == 1.0                  # no decay: constant


def test_the_export_holds_the_ema_and_the_run_keeps_its_own_weights(tmp_path):
    """The main process writes the EMA weights into the export and gives the trained role its own weights back (an
    export that left the EMA in place made rank 0's weights differ from the other ranks' after a run)."""
    from safetensors.torch import load_file

    teacher = Teacher(TeacherConfig(preview_steps=4), MLPDenoiser(MLPConfig(hidden=16)))
    result = run_fit(teacher, trainer_cfg(max_steps=6, ema_decay=0.5), tmp_path)
    trained = {k: v.clone() for k, v in teacher.role("model").state_dict().items()}
    exported = load_file(result.export_dir / "model.safetensors")
    ema = load_model(result.export_dir).state_dict()
    assert any(not torch.equal(trained[k], exported[k]) for k in exported)      # the export is not the raw weights
    assert all(torch.equal(ema[k], exported[k]) for k in exported)


def test_max_seconds_stops_at_the_time_budget_checkpoints_and_a_rerun_trains_no_further(tmp_path):
    """trainer.max_seconds: the run stops at the first step past its training-time budget (all launches counted),
    checkpoints and exports there; a rerun with the same budget trains nothing more."""
    import time as clock

    class Slow(Teacher):
        def loss(self, phase, batch, step):
            clock.sleep(0.05)
            return super().loss(phase, batch, step)

    make = lambda: Slow(TeacherConfig(preview_steps=4), MLPDenoiser(MLPConfig(hidden=16)))     # noqa: E731
    cfg = trainer_cfg(max_steps=1000, max_seconds=0.5, checkpoint_every=1000)
    result = run_fit(make(), cfg, tmp_path)
    assert 5 <= result.step < 40 and result.train_seconds >= 0.5
    assert (tmp_path / "checkpoints" / f"step-{result.step:06d}").is_dir()
    assert json.loads((result.export_dir / "diffdistill.json").read_text())["trained_steps"] == result.step
    again = run_fit(make(), cfg, tmp_path)
    assert again.step == result.step and again.first_step == result.step
    with pytest.raises(ValueError, match="max_seconds must be > 0"):
        run_fit(make(), trainer_cfg(max_seconds=0.0), tmp_path / "bad")
