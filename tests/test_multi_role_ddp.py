"""Every method with more than one trained role (student + critic + discriminator heads, one expert and fake score
per phase) on two CPU processes (torchrun, accelerate MULTI_CPU, gloo) through the real CLI on the toy mixture: the
ranks draw the same shared random choices (backward-simulation step, segment, phase) in the same order, and DDP keeps
every role's weights identical (a role left with parameters that got no gradient would hang or fail here).
The video methods (self forcing, ASD) have the same test on a tiny Wan in test_self_forcing.py / test_asd.py."""

from pathlib import Path

import pytest
from two_ranks import HERE, rank_reports, torchrun_two

from diffdistill.models.registry import build_model, save_model
TOY = {"kind": "mlp", "hidden": 32, "layers": 2, "prediction": "eps", "num_classes": 2,
       "schedule": {"kind": "vp", "beta_schedule": "scaled_linear"}}
COMMON = ["trainer.max_steps=4", "trainer.batch_size=16", "trainer.log_every=1", "trainer.checkpoint_every=4",
          "trainer.sample_every=0", "trainer.preview_count=16",
          "trainer.max_seconds=600"]            # the time budget is decided on rank 0 and broadcast every step


@pytest.fixture(scope="module")
def toy_teacher(tmp_path_factory) -> Path:
    """An (untrained) toy teacher export: the runs only need its architecture and schedule."""
    folder = tmp_path_factory.mktemp("toy") / "teacher"
    save_model(build_model(TOY), folder, {"sampling": {"sampler": "ode", "steps": 8, "guidance": 1.0,
                                                       "num_classes": 2}})
    return folder


# name -> (recipe, overrides, whether the method draws rank-shared choices: DMD2's backward-simulation step, the
# phase; TSCD's segments and the one-step student's time are per sample, so nothing needs sharing there)
CASES = {
    "dmd2 4-step + GAN head": ("recipes/dmd2/toy_gmm2d_4step.yaml", ["method.student_every=1",
                                                                     "method.gan_student_weight=0.005",
                                                                     "method.gan_critic_weight=0.01"], True),
    "tscd + adversarial": ("recipes/tscd/toy_gmm2d.yaml", ["method.stage_steps=[2,1,1]",
                                                          "method.adversarial=[0.1,0.1,0.1,0.1]"], False),
    "hyper one-step (+GAN)": ("recipes/tscd/toy_gmm2d_one_step.yaml", ["method.student_every=1",
                                                                      "method.gan_student_weight=0.005",
                                                                      "method.gan_critic_weight=0.01"], False),
    "phased dmd": ("recipes/phased_dmd/toy_gmm2d_2phase.yaml", ["method.phase_steps=2", "method.student_every=1"],
                   True),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_share_every_draw_and_keep_every_role_identical(case, toy_teacher, tmp_path):
    recipe, overrides, shares = CASES[case]
    extra = [f"model.pretrained={toy_teacher}"]
    if "one_step" in recipe:
        extra.append(f"student.pretrained={toy_teacher}")
    torchrun_two([str(HERE / "roles_probe.py"), str(tmp_path), recipe, f"output_dir={tmp_path / 'run'}", *extra,
                  *COMMON, *overrides], port=29550 + list(CASES).index(case))
    r0, r1 = rank_reports(tmp_path)
    assert len(r0["groups"]) >= 2 and r0["groups"] == r1["groups"]
    assert r0["draws"] == r1["draws"] and (len(r0["draws"]) > 0) == shares
    for group in r0["groups"]:
        assert r0["weights"][group] == pytest.approx(r1["weights"][group], rel=1e-6, abs=1e-6), group
    assert (tmp_path / "run" / "checkpoints" / "step-000004").is_dir()
