import pytest
import torch

from diffdistill.metrics.distribution import mode_coverage, sliced_wasserstein
from diffdistill.models.base import Cond, guided
from diffdistill.models.toy import GaussianMixture, MixtureConfig, MLPDenoiser, ScheduleConfig
from diffdistill.inference.sampling import backward_simulate, few_step_sample, ode_sample


@pytest.mark.parametrize("kind,spacing", [("vp", "linspace"), ("flow", "trailing")])
def test_ode_sampler_on_the_analytic_mixture_reproduces_it(kind, spacing):
    g = GaussianMixture(MixtureConfig(schedule=ScheduleConfig(kind=kind, shift=3.0)))
    gen = torch.Generator().manual_seed(0)
    n = 20_000
    out = ode_sample(g, torch.randn(n, 2, generator=gen), g.schedule.step_grid(200, spacing))
    real, real2 = g.sample_data(n, generator=gen), g.sample_data(n, generator=gen)
    floor = sliced_wasserstein(real2, real)           # two exact draws of 20k differ by ~0.047 (mode-count noise)
    assert sliced_wasserstein(out, real) < max(0.06, 1.3 * floor)
    assert sliced_wasserstein(torch.randn(n, 2), real) > 0.5      # the bound separates noise from data
    on_mode, covered = mode_coverage(out, g.means, radius=0.4)
    assert on_mode > 0.99 and covered == 1.0
    nearest = torch.cdist(out.double(), g.means).argmin(1)
    # per-mode std: no shrinkage or blow-up (50 DDIM steps shrink it by ~15%, 200 by <10%)
    spread = (out.double() - g.means[nearest]).std(0)
    torch.testing.assert_close(spread, torch.full((2,), g.cfg.std, dtype=torch.float64), rtol=0.12, atol=0)


def test_ode_sampler_with_cfg_lands_on_the_conditioning_class():
    g = GaussianMixture(MixtureConfig(modes=8, num_classes=2, schedule=ScheduleConfig(kind="flow")))
    labels = torch.arange(2).repeat(500)
    out = ode_sample(guided(g, 2.0), torch.randn(1000, 2), g.schedule.step_grid(40), Cond(labels=labels))
    nearest = torch.cdist(out.double(), g.means).argmin(1)
    assert (g.classes[nearest] == labels).double().mean() > 0.99


def test_few_step_sampler_with_exact_denoiser_and_one_step_gives_the_mean():
    g = GaussianMixture(MixtureConfig(schedule=ScheduleConfig(kind="flow")))
    out = few_step_sample(g, torch.randn(100, 2), [1.0])
    torch.testing.assert_close(out, g.means.float().mean(0).expand(100, 2), atol=1e-5, rtol=0)


class Recorder(MLPDenoiser):
    def __init__(self):
        super().__init__()
        self.calls = []

    def predict(self, x_t, t, cond):
        self.calls.append((x_t.clone(), t.clone(), torch.is_grad_enabled()))
        return super().predict(x_t, t, cond)


def test_backward_simulation_starts_from_pure_noise_and_uses_the_students_own_rollout():
    student = Recorder()
    noise = torch.randn(4, 2)
    ts = [1.0, 0.75, 0.5, 0.25]
    assert torch.equal(backward_simulate(student, noise, ts, 0), noise) and not student.calls   # k=0: pure noise
    gen = torch.Generator().manual_seed(3)
    x2 = backward_simulate(student, noise, ts, 2, generator=gen)
    assert len(student.calls) == 2 and not any(grad for *_, grad in student.calls)
    assert torch.equal(student.calls[0][0], noise) and torch.equal(student.calls[0][1], torch.ones(4, dtype=torch.float64))
    # the step-1 input is the student's own step-0 x0, re-noised to t=0.75 with fresh noise
    gen = torch.Generator().manual_seed(3)
    x0_0 = MLPDenoiser.predict(student, noise, torch.ones(4), Cond())
    x0_0 = student.schedule.convert(x0_0, noise, torch.ones(4), student.kind, "x0")
    eps = torch.randn(4, 2, generator=gen)
    x1 = student.schedule.add_noise(x0_0, eps, torch.full((4,), 0.75))
    torch.testing.assert_close(student.calls[1][0], x1)
    assert x2.shape == noise.shape
    with pytest.raises(ValueError, match="outside"):
        backward_simulate(student, noise, ts, 4)


def test_few_step_sample_sends_gradient_only_through_the_last_call():
    student = Recorder()
    out = few_step_sample(student, torch.randn(4, 2), [1.0, 0.5])
    assert [grad for *_, grad in student.calls] == [False, True]
    out.sum().backward()
    assert student.out.weight.grad is not None


@pytest.mark.parametrize("ts", [[], [0.5, 0.7], [1.2, 0.5], [0.5, -0.1]])
def test_bad_sampling_times_are_rejected(ts):
    with pytest.raises(ValueError, match="sampling time"):
        ode_sample(MLPDenoiser(), torch.randn(2, 2), ts)
