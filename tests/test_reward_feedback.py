"""Reward feedback (ReFL; Hyper-SD's feedback stage): the reward models (known answers, gradients, missing files),
the method's rollout, hinge and consistency term, and on the toy mixture a reward that the LoRA learns to raise."""

import pytest
import torch
from safetensors.torch import save_file
from torch.optim.swa_utils import AveragedModel

from diffdistill.data import Batch, ToyDataConfig, ToyMixtureStream
from diffdistill.methods.reward_feedback import RewardFeedback, RewardFeedbackConfig
from diffdistill.models.base import Cond, LoraConfig
from diffdistill.models.reward import ClassifierReward, Reward, RewardConfig, build_reward
from diffdistill.models.toy import GaussianMixture, MixtureConfig, MLPConfig, MLPDenoiser, ScheduleConfig
from diffdistill.train.trainer import OptimizerConfig, TrainerConfig, fit, make_accelerator

FLOW = ScheduleConfig(kind="flow")
MIX = MixtureConfig(modes=8, std=0.1, schedule=FLOW)


class RightwardReward(Reward):
    """Reward = the sample's x coordinate (differentiable): raising it moves mass to the right-hand modes."""

    def forward(self, x0, cond):
        return x0[:, 0].float()


def mlp(seed=0, hidden=64):
    torch.manual_seed(seed)
    return MLPDenoiser(MLPConfig(hidden=hidden, prediction="x0", schedule=FLOW))


def method(**kw):
    cfg = RewardFeedbackConfig(**{"student_lora": LoraConfig(rank=4), **kw})
    m = RewardFeedback(cfg, mlp(1), 0, mlp(2), reward=RightwardReward())
    m.bind_ema(AveragedModel(m.role("student")))
    return m


def batch(n=32):
    return Batch(GaussianMixture(MIX).sample_data(n, generator=torch.Generator().manual_seed(0)), Cond(),
                 torch.arange(n))


# ---------------------------------------------------------------------- reward models
def test_classifier_reward_is_the_log_probability_of_the_conditioning_class_with_gradients():
    reward = ClassifierReward()
    x = torch.randn(6, 1, 32, 32, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 4, 9])
    r = reward(x, Cond(labels=labels))
    with torch.no_grad():
        want = torch.log_softmax(reward.net(x.clamp(-1, 1)), 1)[torch.arange(6), labels]
    torch.testing.assert_close(r, want)
    r.sum().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None for p in reward.parameters())
    assert (x.grad[x.detach().abs() > 1] == 0).all()     # out-of-range pixels: clamped as the evaluator does
    with pytest.raises(ValueError, match="labels"):
        reward(x, Cond())


def test_missing_reward_models_say_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_classifier.py"):
        build_reward(RewardConfig(kind="fmnist_classifier", path=str(tmp_path / "nope.safetensors")))
    with pytest.raises(FileNotFoundError, match="clip/"):
        build_reward(RewardConfig(kind="clip_aesthetic", path=str(tmp_path)))
    with pytest.raises(ValueError, match="needs reward.path"):
        build_reward(RewardConfig(kind="clip_aesthetic"))


def test_clip_aesthetic_reward_decodes_latents_and_scores_the_clip_embedding(tmp_path):
    """Tiny CLIP + a two-layer linear head (the LAION predictor's form) + a tiny SDXL VAE: the score is the head on
    the L2-normalised projected image embedding of the decoded, resized, normalised image; gradients reach x0."""
    pytest.importorskip("diffusers")
    import torch.nn.functional as F

    from diffdistill.metrics.clip_score import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from tiny_diffusers import save_pipeline, tiny_clip_model, tiny_clip_tokenizer, tiny_sdxl_pipeline

    tok = tiny_clip_tokenizer()
    tiny_clip_model(len(tok)).save_pretrained(tmp_path / "aesthetic" / "clip")
    tok.save_pretrained(tmp_path / "aesthetic" / "clip")
    torch.manual_seed(0)
    head = {"0.weight": torch.randn(8, 16), "0.bias": torch.randn(8), "1.weight": torch.randn(1, 8),
            "1.bias": torch.randn(1)}
    save_file(head, tmp_path / "aesthetic" / "head.safetensors")
    pipe = tiny_sdxl_pipeline()
    folder = save_pipeline(pipe, tmp_path / "pipe")
    reward = build_reward(RewardConfig(kind="clip_aesthetic", path=str(tmp_path / "aesthetic"),
                                       pipeline=str(folder)))
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    score = reward(latents, Cond())
    with torch.no_grad():
        images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample.clamp(-1, 1)
        pixels = F.interpolate((images + 1) / 2, size=(32, 32), mode="bicubic", align_corners=False)
        pixels = (pixels - torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).view(
            1, 3, 1, 1)
        out = reward.clip.get_image_features(pixel_values=pixels)
        emb = F.normalize(getattr(out, "pooler_output", out), dim=-1)
        want = (emb @ head["0.weight"].T + head["0.bias"]) @ head["1.weight"].T + head["1.bias"]
    torch.testing.assert_close(score, want.squeeze(-1), rtol=1e-4, atol=1e-4)
    score.sum().backward()
    assert latents.grad.abs().sum() > 0


# ---------------------------------------------------------------------- the method
def test_rollout_stops_inside_the_window_and_both_terms_share_one_student_forward(monkeypatch):
    m = method(rollout_steps=4, window=[0.0, 0.6], consistency_weight=2.0)
    assert m.stops == [2, 3]                       # TCD 4-step times 1, 0.76, 0.5, 0.26: those in [0, 0.6]
    calls = []
    original = m.student.forward
    monkeypatch.setattr(m.student, "forward", lambda *a, **k: calls.append(a[0].shape[0]) or original(*a, **k))
    loss, logs = m.loss("student", batch(16), 0)
    assert logs["student/stop"] in (2.0, 3.0)
    assert calls[-1] == 32 and len(calls) == 1 + int(logs["student/stop"])   # rollout calls, then ONE with grad
    torch.testing.assert_close(loss.detach(), logs["student/hinge"] + 2.0 * logs["student/consistency"])
    loss.backward()
    lora = [p for n, p in m.role("student").named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None for p in lora)
    assert all(p.grad is None for n, p in m.role("student").named_parameters() if "lora_" not in n)


def test_the_hinge_stops_at_the_margin():
    m = method(consistency_weight=0.0, margin=-100.0)          # every reward is above the margin: no gradient
    loss, logs = m.loss("student", batch(), 0)
    assert float(loss.detach()) == 0.0 and logs["student/reward"] > -100


@pytest.mark.parametrize("kw,match", [(dict(window=[0.9, 0.95]), "holds none of the rollout"),
                                      (dict(window=[0.5, 0.2]), r"\[t_lo, t_hi\]"),
                                      (dict(student_lora=LoraConfig(rank=0)), "separate LoRA"),
                                      (dict(eta=2.0), r"\[0, 1\]")])
def test_bad_feedback_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        method(**kw)


def test_feedback_needs_the_finished_student():
    with pytest.raises(ValueError, match="student:"):
        RewardFeedback(RewardFeedbackConfig(), mlp(), 0, None, reward=RightwardReward())


def test_on_the_mixture_the_lora_raises_the_reward(tmp_path):
    """300 steps of the rightward reward with margin 2 (x >= 2 earns nothing more): the mean x of the samples rises
    from 0.01 to 1.61 (measured at this seed) and stays bounded; with margin 10 it ran off to 24.6, the reward hacking
    the margin and the consistency term exist to stop."""
    torch.manual_seed(0)
    m = method(rollout_steps=2, consistency_weight=0.0, margin=2.0)
    with torch.no_grad():
        before = m.preview(1000)[:, 0].mean()
    cfg = TrainerConfig(max_steps=300, batch_size=128, log_every=100, checkpoint_every=10**6, preview_count=16,
                        cpu=True, ema_decay=0.95, optimizers={"student": OptimizerConfig(lr=3e-3)})
    fit(m, ToyMixtureStream(ToyDataConfig(mixture=MIX), 128), cfg, tmp_path, make_accelerator(cfg, tmp_path))
    with torch.no_grad():
        after = m.preview(1000)[:, 0].mean()
    assert after > before + 1.0 and after < 2.5, (before, after)


def test_merge_lora_builds_on_the_runs_student_export_and_keeps_its_class_tokens(tmp_path):
    """B1's feedback LoRA sits on the one-step student (the run's `student:` section), not on the teacher in
    `model:`: the half-weight merge is the mean of that base and the fully merged student, class tokens included."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file
    from tiny_diffusers import assert_merged_midway, tiny_sd15_unet_config

    from diffdistill.models.base import role_copy
    from diffdistill.models.class_tokens import CLASS_TOKENS
    from diffdistill.models.registry import build_model, merge_lora, save_model

    cfg = dict(tiny_sd15_unet_config(), in_channels=1, out_channels=1, sample_size=32)
    torch.manual_seed(0)
    teacher = save_model(build_model({"kind": "unet", "config": cfg, "num_classes": 3}), tmp_path / "teacher")
    torch.manual_seed(1)
    base_model = build_model({"kind": "unet", "config": cfg, "num_classes": 3})
    base = save_model(base_model, tmp_path / "one-step")
    student = role_copy(base_model, LoraConfig(rank=4, alpha=4.0))
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn_like(p))
    run_config = {"model": {"kind": "unet", "pretrained": str(teacher)},
                  "student": {"kind": "unet", "pretrained": str(base)},
                  "method": {"name": "reward_feedback", "student_lora": {"rank": 4, "alpha": 4.0}}}
    sampling = {"sampler": "tcd", "times": [1.0], "eta": 0.3, "num_classes": 3}
    export = save_model(student, tmp_path / "run" / "export", {"sampling": sampling, "run_config": run_config})
    half = merge_lora(tmp_path / "run", 0.5, tmp_path / "half")
    full_unet = UNet2DConditionModel.from_pretrained(export, subfolder="unet")
    base_unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    half_unet = UNet2DConditionModel.from_pretrained(half, subfolder="unet")
    assert_merged_midway(half_unet, base_unet, full_unet)
    for key, value in load_file(base / CLASS_TOKENS).items():
        torch.testing.assert_close(load_file(half / CLASS_TOKENS)[key], value)
