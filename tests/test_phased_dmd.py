"""Phased DMD (arXiv:2510.27684): the sub-interval maths (known answers, unbiasedness on the analytic mixture), the
experts model, the phase plan, and what one training step may touch."""

import pytest
import torch

from diffdistill.data import Batch, ToyDataConfig, ToyMixtureStream
from diffdistill.methods.losses import subinterval_denoising_loss
from diffdistill.methods.phased_dmd import PhasedDMD, PhasedDMDConfig
from diffdistill.models.base import Cond
from diffdistill.models.experts import Experts
from diffdistill.models.registry import load_model, save_model
from diffdistill.models.toy import GaussianMixture, MixtureConfig, MLPConfig, MLPDenoiser, ScheduleConfig
from diffdistill.schedule import KINDS, Schedule
from diffdistill.train.trainer import OptimizerConfig, TrainerConfig, fit, make_accelerator

FLOW = ScheduleConfig(kind="flow")
SCHEDULES = {"flow_shift3": Schedule.flow(3.0), "vp_sd": Schedule.vp_from_betas()}


@pytest.mark.parametrize("name", SCHEDULES)
def test_transition_composes_the_two_noisings(name):
    schedule = SCHEDULES[name]
    s = torch.tensor([0.0, 0.2, 0.5, 0.7], dtype=torch.float64)
    t = torch.tensor([0.3, 0.6, 0.9, 0.7], dtype=torch.float64)
    alpha_ts, sigma_ts = schedule.transition(t, s)
    (alpha_t, sigma_t), (alpha_s, sigma_s) = schedule.alpha_sigma(t), schedule.alpha_sigma(s)
    torch.testing.assert_close(alpha_ts * alpha_s, alpha_t)                         # means compose
    torch.testing.assert_close(alpha_ts**2 * sigma_s**2 + sigma_ts**2, sigma_t**2)  # variances add up
    assert sigma_ts[-1] == 0                                                        # t = s: no noise added
    x0, e1, e2 = torch.randn(3, 4, 5, dtype=torch.float64)
    x_t = schedule.add_noise_from(schedule.add_noise(x0, e1, s), e2, t, s)
    # the same as one noising of x0 with the combined noise (alpha_ts sigma_s e1 + sigma_ts e2) / sigma_t
    combined = (alpha_ts[:, None] * sigma_s[:, None] * e1 + sigma_ts[:, None] * e2) / sigma_t[:, None]
    torch.testing.assert_close(x_t, schedule.add_noise(x0, combined, t))
    with pytest.raises(ValueError, match="t >= s"):
        schedule.transition(torch.tensor([0.2]), torch.tensor([0.5]))


@pytest.mark.parametrize("kind", KINDS)
def test_subinterval_target_reduces_to_the_plain_target_at_s_zero(kind):
    schedule = Schedule.flow(3.0)                  # alpha(0) = 1, sigma(0) = 0 exactly
    x0, eps = torch.randn(2, 6, 3, dtype=torch.float64)
    t = torch.linspace(0.1, 1.0, 6, dtype=torch.float64)
    scaled, sigma_ts = schedule.subinterval_target(kind, x0, eps, t, torch.zeros(6, dtype=torch.float64))
    torch.testing.assert_close(scaled / sigma_ts[:, None], schedule.target(kind, x0, eps, t))


def test_subinterval_targets_are_the_papers_equations_11_and_12():
    schedule = Schedule.vp_from_betas()
    x_s, eps = torch.randn(2, 5, 3, dtype=torch.float64)
    s, t = torch.full((5,), 0.3, dtype=torch.float64), torch.linspace(0.4, 0.95, 5, dtype=torch.float64)
    (a_t, s_t), (a_s, s_s) = (tuple(c[:, None] for c in schedule.alpha_sigma(v)) for v in (t, s))
    s_ts = schedule.transition(t, s)[1][:, None]
    flow, _ = schedule.subinterval_target("flow", x_s, eps, t, s)
    x0, _ = schedule.subinterval_target("x0", x_s, eps, t, s)
    torch.testing.assert_close(flow / s_ts, (a_s**2 * s_t + a_t * s_s**2) / (a_s**2 * s_ts) * eps - x_s / a_s)
    torch.testing.assert_close(x0 / s_ts, x_s / a_s - a_t * s_s**2 / (a_s**2 * s_ts) * eps)


def test_on_the_mixture_the_subinterval_target_is_unbiased_and_the_naive_one_is_not():
    """The stable-form loss is a weighted MSE whose weight depends on t only, so its minimiser is E[target | x_t]:
    the exact flow of the mixture at x_t iff the residual is orthogonal to every function of x_t (tested on 1, x_t,
    x1 x2). The naive target eps - x_s (plain flow matching with x_s taken for clean data) is not (its x_t moment is
    off by ~60 standard errors): the bias of the paper's four-mode 1-D example."""
    mixture = GaussianMixture(MixtureConfig(layout="grid", modes=4, radius=1.5, std=0.1, schedule=FLOW))
    schedule, n, gen = mixture.schedule, 200_000, torch.Generator().manual_seed(0)
    x0 = mixture.sample_data(n, generator=gen).double()
    s, t = torch.full((n,), 0.5, dtype=torch.float64), torch.full((n,), 0.7, dtype=torch.float64)
    e1, e2 = torch.randn(2, n, 2, generator=gen, dtype=torch.float64)
    x_s = schedule.add_noise(x0, e1, s)
    x_t = schedule.add_noise_from(x_s, e2, t, s)
    exact = mixture(x_t, t).flow
    scaled, sigma_ts = schedule.subinterval_target("flow", x_s, e2, t, s)
    tests = torch.cat([torch.ones(n, 1, dtype=torch.float64), x_t, x_t.prod(1, keepdim=True)], dim=1)   # [n, 4]

    def z_scores(target):
        moments = (target - exact)[:, :, None] * tests[:, None, :]          # [n, 2, 4]
        return (moments.mean(0) / (moments.std(0) / n**0.5)).abs()

    assert z_scores(scaled / sigma_ts[:, None]).max() < 4
    assert z_scores(e2 - x_s).max() > 30


def test_stable_loss_is_finite_as_t_approaches_s_and_weights_are_clamped():
    model = MLPDenoiser(MLPConfig(hidden=16, prediction="flow", schedule=FLOW))
    x_s = torch.randn(8, 2)
    s = torch.full((8,), 0.5, dtype=torch.float64)
    loss = subinterval_denoising_loss(model, model.schedule, x_s, s, s + 1e-9)     # sigma_{t|s} ~ 1e-9
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# ---------------------------------------------------------------------- experts
def mlp(seed, prediction="x0"):
    torch.manual_seed(seed)
    return MLPDenoiser(MLPConfig(hidden=16, prediction=prediction, schedule=FLOW))


def test_experts_route_each_sample_by_time_like_wan22(tmp_path):
    experts = Experts([mlp(0), mlp(1), mlp(2)], boundaries=[0.8, 0.4])
    t = torch.tensor([1.0, 0.8, 0.79, 0.4, 0.39, 0.0])
    assert experts.expert_index(t).tolist() == [0, 0, 1, 1, 2, 2]    # t >= boundary: the higher-noise expert
    x = torch.randn(6, 2)
    mixed = experts(x, t).native
    for k, rows in enumerate(([0, 1], [2, 3], [4, 5])):
        torch.testing.assert_close(mixed[rows], experts.experts[k](x[rows], t[rows]).native)
    experts.only = 2
    torch.testing.assert_close(experts(x, t).native, experts.experts[2](x, t).native)
    experts.only = None
    save_model(experts, tmp_path / "export")
    again = load_model(tmp_path / "export")
    assert isinstance(again, Experts) and again.boundaries == [0.8, 0.4]
    torch.testing.assert_close(again(x, t).native, mixed)


def test_experts_refuse_bad_boundaries_and_mixed_kinds():
    with pytest.raises(ValueError, match="need 1 boundaries"):
        Experts([mlp(0), mlp(1)], [])
    with pytest.raises(ValueError, match="decrease strictly"):
        Experts([mlp(0), mlp(1), mlp(2)], [0.3, 0.6])
    with pytest.raises(ValueError, match="share kind and schedule"):
        Experts([mlp(0), mlp(1, prediction="eps")], [0.5])


# ---------------------------------------------------------------------- the method
TIMES = [1.0, 0.75, 0.5, 0.25]


def phased(phases=2, phase_steps=3, teacher=None, **kw):
    teacher = teacher or mlp(7)
    return PhasedDMD(PhasedDMDConfig(student_times=TIMES, guidance=1.0, phases=phases, phase_steps=phase_steps,
                                     student_every=1, **kw), teacher)


def test_phase_plan_from_the_student_grid():
    m = phased(phases=2, phase_steps=10)
    plan = m._plan
    assert plan.start_times == [1.0, 0.5] and plan.end_times == [0.5, 0.0]
    assert plan.boundaries == [0.625]                      # midway between the phases' times
    assert [plan.phase_of(s) for s in (0, 9, 10, 11, 500)] == [0, 0, 1, 1, 1]
    assert [plan.step_range(k) for k in (0, 1)] == [(0, 2), (2, 4)]
    assert len(m.role("student")) == 2 and len(m.role("critic")) == 2
    four = phased(phases=0, phase_steps=1)._plan          # one phase per step
    assert four.count == 4 and four.end_times == [0.75, 0.5, 0.25, 0.0]
    spec = m.sampling_spec()
    assert spec.sampler == "ode" and spec.times == tuple(TIMES) and spec.distilled


@pytest.mark.parametrize("bad, match", [
    (dict(phases=3), "must divide"),
    (dict(phase_steps=0), "phase_steps"),
    (dict(boundaries=[0.5]), "boundaries"),
    (dict(renoise_floor=[0.9]), "renoise_floor"),
    (dict(t_max=0.6, phases=0, phase_steps=1), "re-noising interval"),
    (dict(gan_student_weight=0.1), "data-free"),
])
def test_bad_phase_settings_are_refused(bad, match):
    kw = dict(phases=2, phase_steps=3) | bad
    with pytest.raises(ValueError, match=match):
        phased(**kw)


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(module, before):
    return any(not torch.equal(p, q) for p, q in zip(module.parameters(), before))


def test_training_touches_only_the_current_phase_and_resumes_in_it(tmp_path):
    """Phase 0 (steps 0-2) trains expert 0 and fake 0 only; phase 1 (steps 3-5) expert 1 and fake 1 only, with
    expert 0 frozen but still generating its input; a run resumed at step 4 is in phase 1."""
    m = phased(phases=2, phase_steps=3)
    student, critic = m.role("student"), m.role("critic")
    data = ToyMixtureStream(ToyDataConfig(mixture=MixtureConfig(schedule=FLOW)), 32)
    cfg = TrainerConfig(max_steps=3, batch_size=32, optimizers={"student": OptimizerConfig(lr=1e-3),
                                                                 "critic": OptimizerConfig(lr=1e-3)},
                        log_every=1, checkpoint_every=3)
    before = [snapshot(e) for e in student.experts] + [snapshot(c) for c in critic.experts]
    fit(m, data, cfg, tmp_path, make_accelerator(cfg, tmp_path))
    moved = [changed(e, b) for e, b in zip([*student.experts, *critic.experts], before)]
    assert moved == [True, False, True, False]
    assert m.phase_of(4) == 1
    after_phase0 = snapshot(student.experts[0])
    cfg.max_steps = 6
    fit(m, data, cfg, tmp_path, make_accelerator(cfg, tmp_path))
    assert not changed(student.experts[0], after_phase0)
    assert changed(student.experts[1], before[1]) and changed(critic.experts[1], before[3])


def test_phase_sample_uses_the_frozen_earlier_expert_and_lands_at_the_phase_end(monkeypatch):
    m = phased(phases=2, phase_steps=3)
    m.phase = 1
    batch = Batch(torch.randn(4, 2), Cond(), torch.arange(4))
    seen = []
    for k, expert in enumerate(m.role("student").experts):
        original = expert.predict
        monkeypatch.setattr(expert, "predict", lambda x, t, c, k=k, f=original: seen.append(
            (k, round(float(t[0]), 4), torch.is_grad_enabled())) or f(x, t, c))
    x_s, j = m.generate(batch, with_grad=True)
    assert j in (2, 3) and x_s.requires_grad
    # expert 0 (no grad) runs steps 0, 1; expert 1 runs the phase's steps before the exit without grad, then once with
    assert seen[:2] == [(0, 1.0, False), (0, 0.75, False)]
    assert seen[-1] == (1, TIMES[j], True) and all(not g for _, _, g in seen[:-1])
    t, s = m._renoise_t(1000, 1.0, torch.device("cpu"))
    assert bool((t >= s).all()) and float(s[0]) == 0.0 and t.max() <= 1.0
    m.phase = 0
    t, s = m._renoise_t(1000, 1.0, torch.device("cpu"))
    assert float(s[0]) == 0.5 and bool((t >= 0.5).all())         # reverse-nested: (t_k, 1), not (t_k, t_{k-1})


# ---------------------------------------------------------------------- B3's mixture with unequal mode weights
def test_weighted_mixture_draws_and_denoises_with_its_weights():
    from diffdistill.metrics.distribution import mode_weight_error

    weights = [0.5, 0.3, 0.1, 0.1]
    mixture = GaussianMixture(MixtureConfig(modes=4, std=0.05, weights=weights, schedule=FLOW))
    equal = GaussianMixture(MixtureConfig(modes=4, std=0.05, schedule=FLOW))
    gen = torch.Generator().manual_seed(0)
    draws = mixture.sample_data(20_000, generator=gen)
    error = mode_weight_error(draws, mixture.means, mixture.weights, radius=0.2)
    assert error < 0.01
    assert mode_weight_error(equal.sample_data(20_000, generator=gen), mixture.means, mixture.weights, 0.2) == \
        pytest.approx(0.3, abs=0.01)                         # TV(equal, weights) = (0.25 + 0.05 + 0.15 + 0.15) / 2
    # at t = 1 (pure noise) the exact x0 is the weighted mean of the modes
    x0 = mixture(torch.randn(3, 2), torch.ones(3)).x0.double()
    torch.testing.assert_close(x0, (mixture.weights[:, None] * mixture.means).sum(0).expand(3, 2), atol=1e-6,
                               rtol=0)
    with pytest.raises(ValueError, match="one per mode"):
        MixtureConfig(modes=4, weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="unlabelled"):
        MixtureConfig(modes=4, num_classes=2, weights=weights)


def test_euler_backward_simulation_is_the_ode_samplers_rollout():
    """The no-grad rollout Phased DMD trains on is exactly the sampler its export is sampled with (ode_sample)."""
    from diffdistill.inference.sampling import backward_simulate, ode_sample

    model, noise = mlp(3, prediction="flow"), torch.randn(5, 2)
    steps = []
    final = ode_sample(model, noise, TIMES, callback=lambda i, x, x0: steps.append(x))
    for k in range(len(TIMES)):
        torch.testing.assert_close(backward_simulate(model, noise, TIMES, k, euler=True), steps[k])
    last = backward_simulate(model, noise, TIMES, len(TIMES) - 1, euler=True)
    torch.testing.assert_close(model(last, torch.full((5,), TIMES[-1])).x0, final)


def test_a_two_expert_teacher_gives_each_phase_its_expert_and_refuses_phases_across_its_switch():
    teacher = Experts([mlp(10), mlp(11)], boundaries=[0.6])       # Wan2.2-like: high-noise / low-noise
    m = phased(phases=2, phase_steps=3, teacher=teacher, boundaries=[0.6])
    for k, expert in enumerate(m.role("student").experts):        # copies of the expert that covers the phase
        for a, b in zip(expert.parameters(), teacher.experts[k].parameters()):
            assert torch.equal(a, b) and a is not b
    assert len(m.role("critic").experts[0].experts) == 2          # each fake: the whole two-expert teacher
    with pytest.raises(ValueError, match="straddle the teacher's expert switch"):
        phased(phases=2, phase_steps=3, teacher=Experts([mlp(10), mlp(11)], boundaries=[0.8]))
