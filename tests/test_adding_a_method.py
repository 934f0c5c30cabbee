"""docs/adding-a-method.md stays true: its worked example runs through the real trainer and learns what it says."""

import re
from pathlib import Path

import torch

from diffdistill.data import ToyDataConfig, ToyMixtureStream
from diffdistill.inference.sampling import ode_sample
from diffdistill.models.toy import GaussianMixture, MixtureConfig
from diffdistill.train.trainer import OptimizerConfig, TrainerConfig, fit, make_accelerator

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"


def doc_namespace() -> dict:
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[0]       # the method file of the example
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)     # noqa: S102 - our own documentation, under test
    return namespace


def test_the_worked_example_trains_a_one_step_student_onto_the_teachers_ode_map(tmp_path):
    ns = doc_namespace()
    teacher = GaussianMixture(MixtureConfig(modes=4, std=0.1))        # exact denoiser: a perfect teacher
    from diffdistill.models.toy import MLPConfig, MLPDenoiser

    method = ns["KnowledgeDistillation"](ns["KnowledgeDistillationConfig"](teacher_steps=8), teacher)
    method.student = MLPDenoiser(MLPConfig(hidden=64, prediction="x0"))   # the mixture itself has no weights
    noise = torch.randn(512, 2, generator=torch.Generator().manual_seed(1))
    target = ode_sample(teacher, noise, teacher.schedule.step_grid(8))
    ones = torch.ones(512, dtype=torch.float64)
    before = (method.student(noise, ones).x0 - target).pow(2).mean().item()
    cfg = TrainerConfig(max_steps=400, batch_size=128, log_every=100, checkpoint_every=10**6, preview_count=8,
                        cpu=True, optimizers={"student": OptimizerConfig(lr=3e-3)})
    data = ToyMixtureStream(ToyDataConfig(mixture=MixtureConfig(modes=4, std=0.1)), 128)
    fit(method, data, cfg, tmp_path, make_accelerator(cfg, tmp_path))
    with torch.no_grad():
        after = (method.role("student")(noise, ones).x0 - target).pow(2).mean().item()
    assert after < 0.1 * before, (before, after)
    assert (tmp_path / "export" / "diffdistill.json").is_file()
    roles = ns["KnowledgeDistillation"].declare_roles(ns["KnowledgeDistillationConfig"]())
    assert [r.name for r in roles] == ["student"]
