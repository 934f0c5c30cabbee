import pytest
import torch

from diffdistill.models.base import NULL_LABEL, Cond, LoraConfig, freeze, guided, role_copy
from diffdistill.models.toy import GaussianMixture, MixtureConfig, MLPConfig, MLPDenoiser, ScheduleConfig
from diffdistill.schedule import KINDS


def two_class_mixture(kind="vp"):
    return GaussianMixture(MixtureConfig(modes=4, num_classes=2, std=0.2, schedule=ScheduleConfig(kind=kind)))


@pytest.mark.parametrize("kind", ["vp", "flow"])
def test_mixture_x0_is_the_exact_posterior_mean(kind):
    """Monte-Carlo check of E[x0 | x_t] by importance weighting exact data samples with p(x_t | x0)."""
    g = two_class_mixture(kind)
    x0 = g.sample_data(200_000, generator=torch.Generator().manual_seed(1)).double()
    t = torch.tensor([0.45])
    alpha, sigma = (c.item() for c in g.schedule.alpha_sigma(t))
    x_t = torch.tensor([[0.7, -0.3], [1.5, 1.5]])
    logw = -((x_t.double()[:, None] - alpha * x0[None]) ** 2).sum(-1) / (2 * sigma**2)        # [2, N]
    mc = (logw.softmax(1)[..., None] * x0[None]).sum(1)
    exact = g(x_t, t.expand(2)).x0.double()
    torch.testing.assert_close(exact, mc, atol=0.02, rtol=0)


def test_mixture_limits_and_class_conditioning():
    g = two_class_mixture("flow")
    x = torch.randn(16, 2)
    near_clean = g(x, torch.full((16,), 1e-6)).x0
    torch.testing.assert_close(near_clean, x, atol=1e-4, rtol=0)                   # t -> 0: x0 = x_t
    pure_noise = g(x, torch.ones(16)).x0
    torch.testing.assert_close(pure_noise, g.means.float().mean(0).expand(16, 2), atol=1e-5, rtol=0)
    labels = torch.tensor([0, 1]).repeat(8)
    cls = g(x, torch.ones(16), Cond(labels=labels)).x0                              # class mean at t = 1
    for c in (0, 1):
        torch.testing.assert_close(cls[labels == c], g.means[g.classes == c].float().mean(0).expand(8, 2), atol=1e-5, rtol=0)
    uncond = g(x, torch.ones(16), Cond(labels=torch.full((16,), NULL_LABEL))).x0
    torch.testing.assert_close(uncond, pure_noise)


@pytest.mark.parametrize("kind", KINDS)
def test_prediction_reads_every_kind_consistently(kind):
    net = MLPDenoiser(MLPConfig(prediction=kind))
    x_t, t = torch.randn(8, 2), torch.rand(8) * 0.9 + 0.05
    pred = net(x_t, t)
    assert pred.kind == kind and pred.native.shape == (8, 2)
    recon = net.schedule.add_noise(pred.x0, pred.eps, t)       # x0 and eps must explain x_t
    torch.testing.assert_close(recon, x_t, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pred.flow, pred.eps - pred.x0, atol=1e-5, rtol=1e-5)


def test_model_rejects_bad_time_and_shapes():
    net = MLPDenoiser()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        net(torch.randn(2, 2), torch.tensor([0.5, 999.0]))
    with pytest.raises(ValueError, match="batch size"):
        net(torch.randn(2, 2), torch.rand(3))
    with pytest.raises(TypeError, match="float"):
        net(torch.randn(2, 2), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        net(torch.randn(2, 3), torch.rand(2))


def test_cfg_standard_form():
    g = two_class_mixture()
    x, t = torch.randn(6, 2), torch.full((6,), 0.7)
    cond = Cond(labels=torch.tensor([0, 1, 0, 1, 0, 1]))
    c, u = g(x, t, cond).x0, g(x, t, g.null_cond(cond)).x0
    torch.testing.assert_close(guided(g, 1.0)(x, t, cond).x0, c)
    torch.testing.assert_close(guided(g, 0.0)(x, t, cond).x0, u)
    torch.testing.assert_close(guided(g, 3.0)(x, t, cond).x0, u + 3.0 * (c - u), atol=1e-6, rtol=1e-6)


def test_cfg_combination_is_the_same_in_every_parameterisation():
    net = MLPDenoiser(MLPConfig(prediction="v", num_classes=3))
    x, t, cond = torch.randn(5, 2), torch.rand(5) * 0.8 + 0.1, Cond(labels=torch.tensor([0, 1, 2, 0, 1]))
    g = guided(net, 4.0)(x, t, cond)
    c, u = net(x, t, cond), net(x, t, net.null_cond(cond))
    torch.testing.assert_close(g.eps, u.eps + 4.0 * (c.eps - u.eps), atol=1e-5, rtol=1e-5)


def test_role_copy_is_independent_and_teacher_stays_frozen():
    teacher = freeze(MLPDenoiser())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = role_copy(teacher)
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    student(torch.randn(4, 2), torch.rand(4)).native.pow(2).mean().backward()
    opt.step()
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())


def test_lora_role_copy_trains_only_adapters():
    teacher = freeze(MLPDenoiser())
    student = role_copy(teacher, LoraConfig(rank=4))
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    x, t = torch.randn(4, 2), torch.rand(4)
    torch.testing.assert_close(student(x, t).native, teacher(x, t).native)     # LoRA B starts at zero


def test_our_networks_start_from_an_export_with_pretrained(tmp_path):
    from diffdistill.config import ConfigError
    from diffdistill.models.registry import build_model, save_model
    from diffdistill.train.recipe import resolve

    torch.manual_seed(0)
    net = MLPDenoiser(MLPConfig(hidden=32, layers=2, prediction="x0", num_classes=2))
    save_model(net, tmp_path / "run" / "export")
    x, t, cond = torch.randn(5, 2), torch.rand(5), Cond(labels=torch.tensor([0, 1, 0, 1, 0]))
    for source in (tmp_path / "run", tmp_path / "run" / "export"):        # a run directory or its export folder
        loaded = build_model({"kind": "mlp", "pretrained": str(source)})
        assert loaded.cfg == net.cfg and torch.equal(loaded(x, t, cond).x0, net(x, t, cond).x0)
    with pytest.raises(ConfigError, match=r"architecture comes from the export; remove \['hidden'\]"):
        build_model({"kind": "mlp", "pretrained": str(tmp_path / "run"), "hidden": 64})
    save_model(GaussianMixture(MixtureConfig()), tmp_path / "mixture")
    with pytest.raises(ConfigError, match="holds a 'toy_gmm' model, not 'mlp'"):
        build_model({"kind": "mlp", "pretrained": str(tmp_path / "mixture")})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_model({"kind": "mlp", "pretrained": str(tmp_path / "nowhere")})
    _, resolved = resolve({"model": {"kind": "mlp", "pretrained": "runs/x"}, "method": {"name": "teacher"},
                           "data": {"name": "toy_gmm"}})
    assert resolved["model"] == {"kind": "mlp", "pretrained": "runs/x"}
