"""Hyper-SD on SD1.5/SDXL-architecture models: the shipped recipes train on tiny models, the unified LoRA student
reproduces our TCD samples in a stock diffusers pipeline, and the LoRA is also written in the kohya layout ComfyUI
loads. Tiny random models built from configs (tests/tiny_diffusers.py)."""

import json

import pytest
import torch

pytest.importorskip("diffusers")

from safetensors.torch import load_file  # noqa: E402

from diffdistill.inference.sampling import tcd_sample  # noqa: E402
from diffdistill.models.base import LoraConfig, role_copy  # noqa: E402
from diffdistill.models.diffusers import COMFYUI_LORA  # noqa: E402
from diffdistill.models.registry import build_model, load_model, read_export_meta, save_model  # noqa: E402
from test_dmd2_sd import run_recipe, sdxl, sdxl_cond  # noqa: E402,F401  (sdxl: the module fixture)
from tiny_diffusers import assert_merged_midway, tiny_sdxl_pipeline  # noqa: E402


def lora_student(folder, rank=4, alpha=2.0):
    teacher = build_model({"kind": "unet", "pretrained": str(folder)})
    student = role_copy(teacher, LoraConfig(rank=rank, alpha=alpha))
    with torch.no_grad():                       # lora_B starts at zero: give the adapters an effect to reproduce
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn_like(p))
    return teacher, student


@pytest.mark.parametrize("steps", [1, 4])
def test_unified_lora_reproduces_our_tcd_samples_in_a_stock_sdxl_pipeline(sdxl, tmp_path, steps):
    """pipe.load_lora_weights(export) + TCDScheduler from the export's scheduler folder, called the documented way
    (num_inference_steps, eta, guidance_scale 0), gives our tcd_sample latents at 1 and 4 steps."""
    from diffusers import StableDiffusionXLPipeline, TCDScheduler

    pipe, folder, _ = sdxl
    torch.manual_seed(0)
    teacher, student = lora_student(folder)
    times = teacher.schedule.step_grid(4, "tcd")
    sampling = {"sampler": "tcd", "times": times.tolist(), "spacing": "tcd", "eta": 0.3}
    export = save_model(student, tmp_path / "export", {"sampling": sampling})
    scheduler = json.loads((export / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "TCDScheduler" and scheduler["prediction_type"] == "epsilon"
    text, pooled, cond = sdxl_cond(pipe)

    gen = torch.Generator().manual_seed(7)
    noise = torch.randn(1, 4, 32, 32, generator=gen)
    with torch.no_grad():
        ours = tcd_sample(load_model(export), noise, teacher.schedule.step_grid(steps, "tcd"), cond, eta=0.3,
                          generator=gen)
    base = StableDiffusionXLPipeline(**{**tiny_sdxl_pipeline().components,
                                        "scheduler": TCDScheduler.from_pretrained(export, subfolder="scheduler")})
    base.load_lora_weights(export)
    base.set_progress_bar_config(disable=True)
    ref = base(prompt_embeds=text, pooled_prompt_embeds=pooled, num_inference_steps=steps, guidance_scale=0.0,
               eta=0.3, generator=torch.Generator().manual_seed(7), output_type="latent").images
    assert ref.abs().max() > 0.5
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=2e-4)


def test_lora_is_also_written_in_the_kohya_layout_comfyui_loads(sdxl, tmp_path):
    """Key names lora_unet_<module path with _>.{lora_down.weight, lora_up.weight, alpha}, one triple per adapted
    UNet module; alpha is the adapter's own (2, not the rank); up @ down * alpha / rank is peft's delta weight."""
    _, folder, _ = sdxl
    teacher, student = lora_student(folder, rank=4, alpha=2.0)
    export = save_model(student, tmp_path / "export", {"sampling": {"sampler": "tcd", "times": [1.0], "eta": 0.3}})
    kohya = load_file(export / COMFYUI_LORA)
    modules = {name.replace(".", "_"): module for name, module in teacher.network.named_modules()}
    prefixes = {k.split(".")[0] for k in kohya}
    assert all(k.startswith("lora_unet_") for k in prefixes)
    assert all(p.removeprefix("lora_unet_") in modules for p in prefixes)       # every key names a real module
    assert set(kohya) == {f"{p}.{s}" for p in prefixes for s in ("lora_down.weight", "lora_up.weight", "alpha")}
    lora_layers = {n for n, m in student.network.named_modules() if hasattr(m, "lora_A")}
    assert len(prefixes) == len(lora_layers)
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    key = "lora_unet_" + name.replace(".", "_")
    layer = student.network.get_submodule(name)
    adapter = next(iter(layer.lora_A))
    assert float(kohya[f"{key}.alpha"]) == 2.0
    delta = kohya[f"{key}.lora_up.weight"] @ kohya[f"{key}.lora_down.weight"] * (2.0 / 4)
    torch.testing.assert_close(delta, layer.get_delta_weight(adapter))


@pytest.mark.slow        # ~90 s on 2 cores: the default tier stays under 5 minutes; CI runs it in the slow tier
def test_sdxl_tscd_and_one_step_recipes_train_two_steps_on_a_tiny_sdxl(sdxl, tmp_path):
    """The published-settings recipes (LoRA, lr 1e-6, stages 8-4-2-1, TCD) run on a tiny SDXL: TSCD, then the
    one-step enhancement from its export; the unified export samples with TCD and ships both LoRA layouts."""
    _, folder, latents = sdxl
    tscd = run_recipe("recipes/tscd/sdxl_8421_lora.yaml", folder, latents, tmp_path / "tscd",
                      "method.stage_steps=[1,1,1]")
    log = [json.loads(line) for line in (tmp_path / "tscd" / "metrics.jsonl").read_text().splitlines()]
    segments = [row["student/segments"] for row in log if "student/segments" in row]
    assert segments == [6.0]             # the logged mean of steps 1-2: one step with 8 segments, one with 4
    one = run_recipe("recipes/tscd/sdxl_one_step_lora.yaml", folder, latents, tmp_path / "one",
                     f"method.student_lora.init_from={tscd}")
    meta = read_export_meta(one)
    assert meta["sampling"]["sampler"] == "tcd" and meta["sampling"]["timesteps"] == [999]
    assert (one / "pytorch_lora_weights.safetensors").is_file() and (one / COMFYUI_LORA).is_file()
    scheduler = json.loads((one / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "TCDScheduler"


def test_sd15_tscd_recipe_trains_two_steps_on_a_tiny_sd15(tmp_path):
    from test_dmd2_sd import write_images
    from diffdistill.data.encode import encode_folder
    from tiny_diffusers import save_pipeline, tiny_sd15_pipeline

    folder = save_pipeline(tiny_sd15_pipeline(), tmp_path / "pipe")
    latents = encode_folder(folder, write_images(tmp_path / "images"), tmp_path / "latents", shard_size=4)
    export = run_recipe("recipes/tscd/sd15_8421_lora.yaml", folder, latents, tmp_path / "tscd",
                        "method.stage_steps=[1,1,1]", "trainer.mixed_precision=no")
    assert read_export_meta(export)["sampling"]["sampler"] == "tcd" and (export / COMFYUI_LORA).is_file()


def test_lora_init_from_an_export_without_a_lora_says_what_to_point_it_at(sdxl, tmp_path):
    _, folder, _ = sdxl
    teacher = build_model({"kind": "unet", "pretrained": str(folder)})
    export = save_model(role_copy(teacher), tmp_path / "full", {"sampling": {"sampler": "tcd", "times": [1.0]}})
    with pytest.raises(FileNotFoundError, match="student_lora.rank > 0"):
        role_copy(teacher, LoraConfig(rank=4, init_from=str(export)))
    _, student = lora_student(folder, rank=4)
    lora_export = save_model(student, tmp_path / "lora", {"sampling": {"sampler": "tcd", "times": [1.0]}})
    with pytest.raises(ValueError, match="same rank and target_modules"):
        role_copy(teacher, LoraConfig(rank=8, init_from=str(lora_export)))
    again = role_copy(teacher, LoraConfig(rank=4, alpha=2.0, init_from=str(lora_export)))
    x, t = torch.randn(1, 4, 32, 32), torch.tensor([0.4])
    _, _, cond = sdxl_cond(tiny_sdxl_pipeline())
    with torch.no_grad():
        torch.testing.assert_close(again(x, t, cond).native, student(x, t, cond).native, rtol=1e-4, atol=1e-4)


def test_merge_lora_writes_the_student_with_its_adapters_at_the_chosen_weight(sdxl, tmp_path):
    """Half weight = the mean of the base and the fully merged weights, parameter by parameter (the update is
    linear in the scale); the CLI writes it with the run's sampling."""
    from diffusers import UNet2DConditionModel

    from diffdistill.cli import main

    _, folder, _ = sdxl
    teacher, student = lora_student(folder, rank=4, alpha=2.0)
    run_config = {"model": {"kind": "unet", "pretrained": str(folder)},
                  "method": {"name": "reward_feedback", "student_lora": {"rank": 4, "alpha": 2.0}}}
    sampling = {"sampler": "tcd", "times": [1.0], "eta": 0.3}
    export = save_model(student, tmp_path / "run" / "export", {"sampling": sampling, "run_config": run_config})
    assert main(["merge-lora", str(tmp_path / "run"), "--weight", "0.5", "--out", str(tmp_path / "half")]) == 0
    full = UNet2DConditionModel.from_pretrained(export, subfolder="unet")
    half = UNet2DConditionModel.from_pretrained(tmp_path / "half", subfolder="unet")
    assert_merged_midway(half, teacher.network, full)
    meta = read_export_meta(tmp_path / "half")
    assert meta["lora_weight"] == 0.5 and meta["sampling"]["sampler"] == "tcd"
    save_model(teacher, tmp_path / "full-run" / "export", {"sampling": sampling, "run_config": {
        "model": run_config["model"], "method": {"name": "tscd"}}})
    with pytest.raises(ValueError, match="did not train a LoRA"):
        from diffdistill.models.registry import merge_lora

        merge_lora(tmp_path / "full-run", 0.5, tmp_path / "x")
