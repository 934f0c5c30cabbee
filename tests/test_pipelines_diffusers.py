"""Our ODE sampler + adapters + CFG reproduce diffusers' own pipelines on tiny random models (latents compared).

These pin the time mapping (``t_from_model_time(scheduler.timesteps)``), the parameterisation conversions, the
standard CFG form and the latent layouts against an independent implementation.
"""

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import DDIMScheduler, EulerDiscreteScheduler  # noqa: E402

from diffdistill.models.base import Cond, guided  # noqa: E402
from diffdistill.models.registry import build_model  # noqa: E402
from diffdistill.inference.sampling import ode_sample  # noqa: E402
from tiny_diffusers import save_pipeline, tiny_sdxl_pipeline, tiny_wan_pipeline  # noqa: E402


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    pipe = tiny_sdxl_pipeline()
    folder = save_pipeline(pipe, tmp_path_factory.mktemp("sdxl"))
    return pipe, build_model({"kind": "unet", "pretrained": str(folder)})


@pytest.mark.parametrize("scheduler, spacing", [("ddim", "trailing"), ("euler", "leading"), ("euler", "trailing")])
def test_ode_sample_reproduces_sdxl_pipeline(sdxl, scheduler, spacing):
    pipe, model = sdxl
    if scheduler == "ddim":   # set_alpha_to_one: the last step lands on x0, as our sampler's last step returns x0
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=True, clip_sample=False,
                                                   timestep_spacing=spacing)
    else:
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing=spacing)
    steps, scale, size = 4, 5.0, 32     # 4 divides 1000: DDIM steps tau -> tau - 1000 // n, the next grid point
    text, neg_text, pooled, neg_pooled = pipe.encode_prompt("a photo of a cat", negative_prompt="a dog",
                                                            do_classifier_free_guidance=True, device="cpu")
    latents = torch.randn(1, 4, size // 2, size // 2)
    ref = pipe(prompt_embeds=text, negative_prompt_embeds=neg_text, pooled_prompt_embeds=pooled,
               negative_pooled_prompt_embeds=neg_pooled, latents=latents, num_inference_steps=steps,
               guidance_scale=scale, height=size, width=size, output_type="latent").images

    ts = model.schedule.t_from_model_time(pipe.scheduler.timesteps)
    offset = pipe.scheduler.config.steps_offset
    torch.testing.assert_close(ts, model.schedule.step_grid(steps, spacing, steps_offset=offset))
    noise = latents
    if scheduler == "euler" and spacing == "trailing":
        # diffusers quirk: Euler's init_noise_sigma is sigma_max for "linspace"/"trailing" but sqrt(sigma_max^2 + 1)
        # for "leading", so in VP terms its start is sigma(t0) * noise there, and unit noise otherwise
        noise = latents * model.schedule.alpha_sigma(ts[:1])[1].float()
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)  # original size, crop, target
    cond = Cond(text=text, pooled=pooled, time_ids=time_ids)
    uncond = Cond(text=neg_text, pooled=neg_pooled, time_ids=time_ids)
    ours = ode_sample(guided(model, scale, uncond), noise, ts, cond)
    assert ref.abs().max() > 1.0                                    # a non-trivial result to compare
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)


def test_ode_sample_reproduces_wan_pipeline(tmp_path):
    pipe = tiny_wan_pipeline(shift=7.0)
    model = build_model({"kind": "wan", "pretrained": str(save_pipeline(pipe, tmp_path))})
    steps, scale = 4, 6.0
    text, neg_text = pipe.encode_prompt("a cat", negative_prompt="blurry", do_classifier_free_guidance=True,
                                        max_sequence_length=16, device="cpu")
    latents = torch.randn(1, 16, 3, 8, 8)           # diffusers' [B, C, T, H, W]: 9 frames -> 3 latent frames
    ref = pipe(prompt_embeds=text, negative_prompt_embeds=neg_text, latents=latents, num_inference_steps=steps,
               guidance_scale=scale, height=16, width=16, num_frames=9, output_type="latent").frames

    ts = model.schedule.t_from_model_time(pipe.scheduler.timesteps)
    # FlowMatchEulerDiscreteScheduler shifts its last grid point twice; step_grid reproduces that on purpose
    torch.testing.assert_close(ts, model.schedule.step_grid(steps), rtol=1e-6, atol=1e-6)
    ours = ode_sample(guided(model, scale, Cond(text=neg_text)), latents.permute(0, 2, 1, 3, 4), ts, Cond(text=text))
    assert ref.abs().max() > 1.0
    torch.testing.assert_close(ours.permute(0, 2, 1, 3, 4), ref, rtol=1e-5, atol=1e-4)
